"""Dataset layouts: datalists for the supported layouts and the synthetic data generator.

Names are imported from their submodule on first use (``unet_monai.lazy``): importing the package loads
no torch.
"""

from unet_monai.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    globals(),
    {
        "datalists": (
            "case_name",
            "fold_split",
            "folder_datalist",
            "msd_datalist",
            "msd_label_names",
            "split_datalist",
        ),
        "synthetic": ("make_synthetic_dataset",),
    },
)
