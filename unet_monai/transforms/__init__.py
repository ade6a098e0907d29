"""MONAI transform chains for training, validation and inference."""

from unet_monai.transforms.chains import (
    INTENSITY_METHODS,
    augmentation_transforms,
    build_eval_transforms,
    build_train_transforms,
    intensity_transform,
    load_transforms,
)

__all__ = [
    "INTENSITY_METHODS",
    "augmentation_transforms",
    "build_eval_transforms",
    "build_train_transforms",
    "intensity_transform",
    "load_transforms",
]
