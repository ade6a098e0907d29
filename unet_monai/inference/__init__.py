"""Whole-volume inference: slice-by-slice and sliding-window inferers."""

from unet_monai.inference.inferers import volume_inferer
from unet_monai.inference.tta import MirrorTTAInferer

__all__ = ["MirrorTTAInferer", "volume_inferer"]
