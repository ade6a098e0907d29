"""MONAI transform chains for training, validation and inference."""

from unet_monai.transforms.chains import (
    INTENSITY_METHODS,
    augmentation_transforms,
    build_eval_transforms,
    build_train_transforms,
    intensity_transform,
    load_transforms,
)
from unet_monai.transforms.checks import CheckedLoadImaged, CheckImaged, CheckLabeld, CheckPaird
from unet_monai.transforms.labels import ArgmaxLabelsd, argmax_labels
from unet_monai.transforms.save import AtomicSaveImage, AtomicSaveImaged
from unet_monai.transforms.slices import StackNeighbourSlicesd, neighbour_channels, stack_neighbour_slices

__all__ = [
    "ArgmaxLabelsd",
    "argmax_labels",
    "CheckImaged",
    "CheckLabeld",
    "CheckPaird",
    "CheckedLoadImaged",
    "AtomicSaveImage",
    "AtomicSaveImaged",
    "INTENSITY_METHODS",
    "StackNeighbourSlicesd",
    "neighbour_channels",
    "stack_neighbour_slices",
    "augmentation_transforms",
    "build_eval_transforms",
    "build_train_transforms",
    "intensity_transform",
    "load_transforms",
]
