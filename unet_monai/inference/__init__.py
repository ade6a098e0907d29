"""Whole-volume inference: slice-by-slice and sliding-window inferers."""

from unet_monai.inference.inferers import volume_inferer

__all__ = ["volume_inferer"]
