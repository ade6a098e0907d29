"""unet-monai: MONAI-based medical image segmentation with a Ronneberger U-Net beside MONAI's networks.

The subpackages are imported here so that bundle configs can say ``$import unet_monai`` and then
use ``unet_monai.data``, ``unet_monai.networks``, ``unet_monai.transforms`` and ``unet_monai.inference``.
"""

from unet_monai import data, handlers, inference, metrics, networks, transforms

__version__ = "0.1.0"

__all__ = ["data", "handlers", "inference", "metrics", "networks", "transforms", "__version__"]
