"""Whole-volume inference: slice-by-slice and sliding-window inferers."""

from unet_monai.inference.autocast import BFloat16Inferer, cpu_bf16_supported
from unet_monai.inference.inferers import volume_inferer
from unet_monai.inference.tta import MirrorTTAInferer

__all__ = ["BFloat16Inferer", "MirrorTTAInferer", "cpu_bf16_supported", "volume_inferer"]
