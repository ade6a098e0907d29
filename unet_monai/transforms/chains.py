"""Transform chains for training, validation and inference, built from MONAI transforms.

A chain is chosen by a few parameters (how to load, how to scale intensities, what size the network
sees, how to augment) instead of being written out transform by transform in every bundle. The
returned objects are plain MONAI ``Compose`` chains, so MONAI's ``Invertd`` can undo them.

2D networks train on slices of 3D volumes: set ``slice_axis`` (0, 1 or 2, in the volume's RAS
axes) and the training chain samples single slices from each volume; validation and inference
chains keep the whole volume, which ``SliceInferer`` then walks slice by slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    Compose,
    DivisiblePadd,
    EnsureChannelFirstd,
    EnsureTyped,
    MapLabelValued,
    MapTransform,
    NormalizeIntensityd,
    OneOf,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
)

from unet_monai.transforms.checks import CheckedLoadImaged, CheckScaledd, CheckZScored, input_checks
from unet_monai.transforms.slices import StackNeighbourSlicesd

INTENSITY_METHODS = ("zscore", "percentile", "range", "ct", "none")
# NIfTI world axes: codes name the direction each axis points to (RAS+), as nibabel does.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def load_transforms(
    keys: Sequence[str],
    reader: str | None = None,
    axcodes: str | None = "RAS",
    checks: Sequence[MapTransform] = (),
) -> list:
    """Read files (NIfTI, DICOM series folders, PNG / TIFF) into channel-first images.

    A file that cannot be read (missing, truncated, corrupt) stops with one error naming it
    (``CheckedLoadImaged``).

    Args:
        keys: dictionary keys holding file paths, e.g. ``["image", "label"]``.
        reader: a MONAI reader name ("NibabelReader", "ITKReader", "PydicomReader", "PILReader");
            ``None`` lets MONAI pick one from the file suffix.
        axcodes: reorient to these axis codes ("RAS"); ``None`` keeps the file's orientation (2D images).
        checks: transforms run on the images as loaded, before reorientation (``input_checks``).
    """
    transforms: list = [CheckedLoadImaged(keys=keys, reader=reader), EnsureChannelFirstd(keys=keys), *checks]
    if axcodes is not None:
        transforms.append(Orientationd(keys=keys, axcodes=axcodes, labels=RAS_LABELS))
    return transforms


def label_mapping(label_key: str | None, label_values: Sequence[int] | None) -> list:
    """Labels stored with other values than 0 .. K-1 (``[0, 255]`` masks) mapped to class indices right
    after loading (MONAI's ``MapLabelValued``); a value not listed stays and the label check names it."""
    if label_key is None or label_values is None or list(label_values) == list(range(len(label_values))):
        return []
    targets = list(range(len(label_values)))
    return [MapLabelValued(keys=label_key, orig_labels=list(label_values), target_labels=targets)]


def intensity_transform(
    key: str,
    method: str = "zscore",
    lower: float = 0.5,
    upper: float = 99.5,
    a_min: float = 0.0,
    a_max: float = 1.0,
    ct_stats: Sequence[float] | None = None,
) -> list:
    """Scale image intensities.

    Args:
        key: the image key.
        method: "zscore" (per image and channel mean / std), "percentile" (clip to the ``lower`` /
            ``upper`` percentiles and scale to [0, 1], as the LV project did with 5 / 95),
            "range" (clip ``a_min``..``a_max`` to [0, 1], e.g. CT windows), "ct" (nnU-Net's CT
            normalisation: clip to the dataset's foreground percentiles, then one z-score for the whole
            dataset; ``ct_stats`` = [lower, upper, mean, std] from its fingerprint) or "none".
    """
    if method == "zscore":
        # Refused when the z-score would blank the image (an extreme voxel) or overflow float32.
        return [
            CheckZScored(key),
            NormalizeIntensityd(keys=key, channel_wise=True),
            CheckScaledd(key, "z-score"),
        ]
    if method == "percentile":
        return [
            ScaleIntensityRangePercentilesd(
                keys=key, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
            ),
            CheckScaledd(key, "percentile"),
        ]
    if method == "range":
        return [
            ScaleIntensityRanged(keys=key, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True),
            CheckScaledd(key, "range"),
        ]
    if method == "ct":
        if ct_stats is None or len(ct_stats) != 4 or not ct_stats[3] > 0 or not ct_stats[0] < ct_stats[1]:
            raise ValueError(
                f"intensity 'ct' needs ct_stats = [lower, upper, mean, std] with lower < upper and std > 0 "
                f"(the dataset's foreground statistics), got {ct_stats!r}"
            )
        lower, upper, mean, std = (float(value) for value in ct_stats)
        return [
            ScaleIntensityRanged(keys=key, a_min=lower, a_max=upper, b_min=lower, b_max=upper, clip=True),
            NormalizeIntensityd(keys=key, subtrahend=mean, divisor=std),
            CheckScaledd(key, "ct"),
        ]
    if method == "none":
        return []
    raise ValueError(f"intensity method must be one of {INTENSITY_METHODS}, got {method!r}")


def augmentation_transforms(
    keys: Sequence[str],
    image_key: str,
    spatial_dims: int,
    prob: float = 0.2,
    rotate_degrees: float = 15.0,
    scale: float = 0.15,
    shear: float = 0.0,
    flip_axes: Sequence[int] = (),
    intensity: bool = True,
) -> list:
    """Random spatial and intensity augmentation for ``spatial_dims``-D samples.

    Args:
        keys: image and label keys (labels are resampled with nearest neighbour).
        image_key: the key intensity augmentation applies to.
        spatial_dims: 2 for slices, 3 for volumes.
        prob: probability of each random transform.
        rotate_degrees: maximum in-plane rotation (about every axis in 3D).
        scale: maximum relative zoom in or out.
        shear: maximum shear factor (0.035 is about 2 degrees).
        flip_axes: spatial axes along which a mirror is anatomically valid (axes of the loaded
            image or volume; volumes are mirrored before slicing).
        intensity: add noise, scaling, shift and gamma contrast.
    """
    modes = ["bilinear" if key == image_key else "nearest" for key in keys]
    angle = math.radians(rotate_degrees)
    rotate_range = [angle] if spatial_dims == 2 else [angle, angle, angle]
    transforms: list = []
    if rotate_degrees > 0 or scale > 0 or shear > 0:
        transforms.append(
            RandAffined(
                keys=keys,
                prob=prob,
                rotate_range=rotate_range,
                scale_range=[scale] * spatial_dims,
                shear_range=[shear] * (2 if spatial_dims == 2 else 6) if shear > 0 else None,
                mode=modes,
                padding_mode="zeros",
            )
        )
    transforms += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in flip_axes]
    if intensity:
        transforms += [
            RandGaussianNoised(keys=image_key, prob=prob, std=0.05),
            RandScaleIntensityd(keys=image_key, prob=prob, factors=0.1),
            RandShiftIntensityd(keys=image_key, prob=prob, offsets=0.1),
            RandAdjustContrastd(keys=image_key, prob=prob, gamma=(0.7, 1.5)),
        ]
    return transforms


def patch_sampling(
    keys: Sequence[str], label_key: str, roi_size: Sequence[int], num_samples: int, pos_fraction: float
) -> list:
    """Pad to ``roi_size``, then ``num_samples`` random patches, centred on the label with probability
    ``pos_fraction`` (MONAI's ``RandCropByPosNegLabeld``)."""
    return [
        SpatialPadd(keys=keys, spatial_size=list(roi_size)),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key=label_key,
            spatial_size=list(roi_size),
            pos=pos_fraction,
            neg=1.0 - pos_fraction,
            num_samples=num_samples,
        ),
    ]


def _size_transforms(
    keys: Sequence[str],
    image_key: str,
    resize_to: Sequence[int] | None,
    pixdim: Sequence[float] | None = None,
) -> list:
    """Resample to a voxel spacing (``pixdim``, mm) and / or resize to a fixed spatial size: images
    bilinear, labels nearest. ``Invertd`` undoes both, back to the file's grid."""
    modes = ["bilinear" if key == image_key else "nearest" for key in keys]
    transforms: list = []
    if pixdim is not None:
        transforms.append(Spacingd(keys=keys, pixdim=list(pixdim), mode=modes))
    if resize_to is not None:
        transforms.append(Resized(keys=keys, spatial_size=list(resize_to), mode=modes))
    return transforms


def _slice_sampling(
    keys: Sequence[str],
    label_key: str,
    slice_axis: int,
    neighbours: int,
    roi_size: Sequence[int],
    num_samples: int,
    pos_fraction: float,
) -> list:
    """Sample whole slices along ``slice_axis`` (foreground-centred with probability ``pos_fraction``),
    with ``neighbours`` slices on each side stacked as image channels (2.5D), drop the slice axis, then
    pad / crop to the network's in-plane ``roi_size``."""
    image_key = keys[0]
    slice_size = [-1, -1, -1]
    slice_size[slice_axis] = 1
    stacking = [StackNeighbourSlicesd(keys=image_key, slice_axis=slice_axis, neighbours=neighbours)]
    return (stacking if neighbours > 0 else []) + [
        RandCropByPosNegLabeld(
            keys=keys,
            label_key=label_key,
            spatial_size=slice_size,
            pos=pos_fraction,
            neg=1.0 - pos_fraction,
            num_samples=num_samples,
            allow_smaller=True,
        ),
        SqueezeDimd(keys=keys, dim=slice_axis + 1),
        SpatialPadd(keys=keys, spatial_size=list(roi_size)),
        RandSpatialCropd(keys=keys, roi_size=list(roi_size), random_size=False),
    ]


def build_train_transforms(
    image_key: str = "image",
    label_key: str = "label",
    reader: str | None = None,
    axcodes: str | None = "RAS",
    intensity: str = "zscore",
    percentiles: Sequence[float] = (0.5, 99.5),
    intensity_range: Sequence[float] = (0.0, 1.0),
    resize_to: Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
    ct_stats: Sequence[float] | None = None,
    label_values: Sequence[int] | None = None,
    slice_axis: int | Sequence[int] | None = 2,
    neighbours: int = 0,
    roi_size: Sequence[int] = (64, 64),
    num_samples: int = 8,
    pos_fraction: float = 0.67,
    augment: bool = True,
    aug_prob: float = 0.2,
    rotate_degrees: float = 15.0,
    scale: float = 0.15,
    shear: float = 0.0,
    flip_axes: Sequence[int] = (),
    channels: int | None = 1,
    num_classes: int | None = None,
    allow_empty_labels: bool | None = None,
    spatial_dims: int | None = None,
) -> Compose:
    """Training chain: load, check, orient, scale, sample patches (slices for 2D networks), augment.

    Args:
        pixdim: resample to this voxel spacing (mm per axis, after reorientation); ``None`` keeps the
            file's grid.
        ct_stats: [lower, upper, mean, std] for ``intensity="ct"``.
        label_values: the values the label files store, in class order (``[0, 255]``): mapped to
            0 .. K-1 after loading (``label_mapping``); ``None`` when they store class indices.
        slice_axis: for a 2D network on 3D volumes, the volume axis to slice along, or several
            (each volume then gives slices along one of them, chosen at random); ``None`` when the
            data are already 2D images or the network is 3D.
        neighbours: 2.5D input: slices on each side of a slice stacked as extra channels
            (``StackNeighbourSlicesd``); the network needs ``in_channels * (2 * neighbours + 1)`` inputs.
        roi_size: the network's input size (2D in-plane size when slicing); images are padded up
            to it and randomly cropped down to it.
        num_samples: patches (slices) drawn per volume per iteration.
        pos_fraction: fraction of patches centred on foreground.
        channels: image channels the network takes (a 4D NIfTI's 4th axis is read as channels);
            ``None`` accepts any.
        num_classes: classes including background; label values outside ``0 .. num_classes - 1``
            stop with an error naming the file (``None``: any non-negative integer).
        allow_empty_labels: accept labels of background only; ``None``: yes for 2D images, no for
            volumes (a volume without foreground is a missing or wrong mask).
        spatial_dims: spatial dimensions of the loaded images; default: 3 when slicing volumes
            (``slice_axis`` set), else those of ``roi_size``.
        Other arguments: see ``load_transforms``, ``intensity_transform`` and ``augmentation_transforms``.

    Right after loading, every image and label is checked (``unet_monai.transforms.checks``): images
    of the wrong dimensions or channels, NaN / infinite or constant intensities, labels outside the
    classes, empty volume labels, and label grids (shape, affine) that differ from the image's stop
    with one error naming the file.
    """
    keys = [image_key, label_key]
    image_dims = spatial_dims or (3 if slice_axis is not None else len(roi_size))
    empty_ok = image_dims == 2 if allow_empty_labels is None else allow_empty_labels
    checks = label_mapping(label_key, label_values)
    checks += input_checks(image_key, label_key, image_dims, channels, num_classes, empty_ok)
    transforms = load_transforms(keys, reader=reader, axcodes=axcodes, checks=checks)
    transforms += intensity_transform(
        image_key, intensity, percentiles[0], percentiles[1], intensity_range[0], intensity_range[1], ct_stats
    )
    transforms += _size_transforms(keys, image_key, resize_to, pixdim)
    transforms.append(EnsureTyped(keys=keys, dtype="float32", track_meta=False))
    spatial_dims = len(roi_size)
    if slice_axis is None:
        # Patches of the network's size from 2D images or 3D volumes.
        transforms += patch_sampling(keys, label_key, roi_size, num_samples, pos_fraction)
    else:
        # Mirror whole volumes (axes of the volume, so "left-right" stays left-right whatever the
        # slice direction), then sample slices along one axis, or along a random one of several.
        transforms += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in flip_axes]
        axes = [slice_axis] if isinstance(slice_axis, int) else list(slice_axis)
        branches = [
            Compose(_slice_sampling(keys, label_key, axis, neighbours, roi_size, num_samples, pos_fraction))
            for axis in axes
        ]
        transforms += branches if len(branches) == 1 else [OneOf(branches)]
    if augment:
        patch_flips = flip_axes if slice_axis is None else ()
        transforms += augmentation_transforms(
            keys, image_key, spatial_dims, aug_prob, rotate_degrees, scale, shear, patch_flips
        )
    return Compose(transforms)


def build_eval_transforms(
    image_key: str = "image",
    label_key: str | None = "label",
    reader: str | None = None,
    axcodes: str | None = "RAS",
    intensity: str = "zscore",
    percentiles: Sequence[float] = (0.5, 99.5),
    intensity_range: Sequence[float] = (0.0, 1.0),
    resize_to: Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
    ct_stats: Sequence[float] | None = None,
    label_values: Sequence[int] | None = None,
    divisible_by: int | None = None,
    channels: int | None = 1,
    num_classes: int | None = None,
    allow_empty_labels: bool | None = None,
    spatial_dims: int | None = None,
) -> Compose:
    """Validation / inference chain: the whole image or volume, loaded, checked, oriented and scaled.

    No cropping: ``SliceInferer`` / ``SlidingWindowInferer`` pad each window to the network's
    size themselves, and ``Invertd`` undoes the orientation (and any resize / pad) so masks
    land on the input's grid.

    Args:
        label_key: ``None`` for inference without labels.
        divisible_by: pad every spatial size up to a multiple of this (for networks that need it).
        spatial_dims: spatial dimensions of the images; default: three when ``axcodes`` names three
            axes (volumes), else not checked.
        Other arguments: as in ``build_train_transforms`` (the same checks run after loading).
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    image_dims = spatial_dims if spatial_dims is not None else (len(axcodes) if axcodes else None)
    empty_ok = image_dims != 3 if allow_empty_labels is None else allow_empty_labels
    checks = label_mapping(label_key, label_values)
    checks += input_checks(image_key, label_key, image_dims, channels, num_classes, empty_ok)
    transforms: list[MapTransform] = load_transforms(keys, reader=reader, axcodes=axcodes, checks=checks)
    transforms += intensity_transform(
        image_key, intensity, percentiles[0], percentiles[1], intensity_range[0], intensity_range[1], ct_stats
    )
    transforms += _size_transforms(keys, image_key, resize_to, pixdim)
    if divisible_by is not None:
        transforms.append(DivisiblePadd(keys=keys, k=divisible_by))
    transforms.append(EnsureTyped(keys=keys, dtype="float32"))
    return Compose(transforms)
