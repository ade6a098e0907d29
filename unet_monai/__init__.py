"""unet-monai: MONAI-based medical image segmentation with a Ronneberger U-Net beside MONAI's networks.

Bundle configs say ``$import unet_monai`` and then use ``unet_monai.data``, ``unet_monai.networks``,
``unet_monai.transforms``, ``unet_monai.inference`` ...: each subpackage or module is imported the
first time it is named (``unet_monai.lazy``), so ``import unet_monai`` loads no torch.
"""

from unet_monai.lazy import lazy_exports

__version__ = "0.1.0"

# Every subpackage and module, imported when first named.
_SUBMODULES = (
    "batch_inference",
    "bundle",
    "bundle_contract",
    "checkpoints",
    "checks",
    "cli",
    "data",
    "dicom",
    "distributed",
    "evaluate",
    "handlers",
    "inference",
    "io",
    "jobs",
    "losses",
    "metrics",
    "networks",
    "planning",
    "report",
    "shipped",
    "transforms",
    "visualize",
)
__getattr__, __dir__, _ = lazy_exports(globals(), {}, submodules=_SUBMODULES)
__all__ = ["data", "handlers", "inference", "metrics", "networks", "transforms", "__version__"]
