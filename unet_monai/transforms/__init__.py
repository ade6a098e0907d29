"""MONAI transform chains for training, validation and inference.

Names are imported from their submodule on first use (``unet_monai.lazy``): importing the package loads
no torch.
"""

from unet_monai.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    globals(),
    {
        "chains": (
            "INTENSITY_METHODS",
            "augmentation_transforms",
            "build_eval_transforms",
            "build_train_transforms",
            "intensity_transform",
            "load_transforms",
        ),
        "checks": ("CheckedLoadImaged", "CheckImaged", "CheckLabeld", "CheckPaird"),
        "labels": ("ArgmaxLabelsd", "argmax_labels"),
        "save": ("AtomicSaveImage", "AtomicSaveImaged"),
        "slices": ("StackNeighbourSlicesd", "neighbour_channels", "stack_neighbour_slices"),
    },
)
