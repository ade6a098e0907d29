"""Whole-volume inference: slice-by-slice and sliding-window inferers.

Names are imported from their submodule on first use (``unet_monai.lazy``): importing the package loads
no torch.
"""

from unet_monai.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    globals(),
    {
        "autocast": ("BFloat16Inferer", "cpu_bf16_supported"),
        "inferers": ("volume_inferer",),
        "tta": ("MirrorTTAInferer",),
    },
)
