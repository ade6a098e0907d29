"""The ISBI 2012 EM layout and the chains of the U-Net paper's recipe (weight map, elastic deformation).

Layout (``dataset_dir``)::

    train/image/<n>.png   512x512 uint8 serial-section TEM slices, n = 0..29
    train/label/<n>.png   512x512 uint8: 255 = cell interior, 0 = membrane
    test/<n>.png          the challenge's test slices, no labels

The network's classes are 0 = cell interior and 1 = membrane (the foreground). Slices are serial
sections of one stack, so neighbours look alike: the split is by blocks of slice numbers, never
random (``split_by_slice``). Every image and label is checked before training (``em_datalist``),
each bad file with one line naming it. Images are read by MONAI's ``PILReader`` (PNG and TIFF,
8 or 16 bit), which gives (x, y) arrays, the transpose of (row, column), for images and labels
alike; ``SaveImaged`` with ``PILWriter`` transposes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import PILReader
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    Lambdad,
    LoadImaged,
    NormalizeIntensityd,
    Rand2DElasticd,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropSamplesd,
    SpatialPadd,
)
from PIL import Image

from unet_monai.io import error_line
from unet_monai.transforms.weight_map import BorderWeightMapd

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
MULTI_CHANNEL_MODES = ("RGB", "RGBA", "LA", "CMYK", "YCbCr", "HSV", "LAB", "P")
# Label files: values below this are membrane.
MEMBRANE_BELOW = 128


def _slice_number(path: Path) -> tuple[int, str]:
    """Sort key: numeric stems in numeric order (2 before 10), then other names."""
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 30, path.name)


def check_image(path: str | Path) -> tuple[int, int]:
    """Read a 2D single-channel PNG / TIFF fully; returns its (width, height).

    Raises:
        FileNotFoundError: naming the file, when it does not exist.
        ValueError: naming the file, when it is unreadable, truncated or has colour channels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            size, mode = image.size, image.mode
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        raise ValueError(f"{path}: unreadable or truncated image ({error_line(error)})") from error
    if mode in MULTI_CHANNEL_MODES:
        raise ValueError(f"{path}: image has {mode} channels; expected a single-channel (grey-scale) image")
    return size


def em_datalist(dataset_dir: str | Path, check: bool = True) -> list[dict]:
    """``{"image", "label", "slice"}`` for every ``train/image/<n>.png``, in slice order.

    Args:
        dataset_dir: the ``isbi2012-em`` folder (holding ``train/image`` and ``train/label``).
        check: read every image and label and check that their sizes match.

    Raises:
        FileNotFoundError: no such folder, no images, an image without its label or a label without its image.
        ValueError: an unreadable image or label, colour channels, or a label of another size than its image.
    """
    root = Path(dataset_dir)
    image_dir, label_dir = root / "train" / "image", root / "train" / "label"
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"{image_dir}: no such folder (expected the ISBI 2012 layout train/image/<n>.png)"
        )
    images = sorted((p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_slice_number)
    if not images:
        raise FileNotFoundError(f"{image_dir}: no PNG / TIFF images")
    labels = (
        sorted(p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if label_dir.is_dir()
        else []
    )
    for label in labels:
        if not (image_dir / label.name).is_file():
            raise FileNotFoundError(f"{label}: label without its image (expected {image_dir / label.name})")
    items = []
    for image in images:
        label = label_dir / image.name
        if not label.is_file():
            raise FileNotFoundError(f"{image}: no label beside it (expected {label})")
        if check:
            image_size, label_size = check_image(image), check_image(label)
            if image_size != label_size:
                raise ValueError(f"{label}: label size {label_size} differs from its image's {image_size}")
        slice_number = int(image.stem) if image.stem.isdigit() else len(items)
        items.append({"image": str(image), "label": str(label), "slice": slice_number})
    return items


def split_by_slice(
    items: Sequence[dict], val_slices: Sequence[int], test_slices: Sequence[int]
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, test) items by slice number: test and validation as given, the rest trains.

    Raises:
        ValueError: a slice in both lists, or a listed slice that the datalist does not hold.
    """
    val, test = set(val_slices), set(test_slices)
    if val & test:
        raise ValueError(f"slices {sorted(val & test)} are both validation and test slices")
    missing = (val | test) - {item["slice"] for item in items}
    if missing:
        raise ValueError(f"no slice(s) {sorted(missing)} in the datalist")
    train = [item for item in items if item["slice"] not in val | test]
    return train, [i for i in items if i["slice"] in val], [i for i in items if i["slice"] in test]


def em_image_files(paths: str | Path | Sequence[str | Path], check: bool = True) -> list[str]:
    """Images to segment: a PNG / TIFF file, a folder of them, or a list of either; absolute paths.

    Raises:
        FileNotFoundError: a path that does not exist, or no image at all.
        ValueError: with ``check``, an unreadable or colour image (naming it).
    """
    found: list[Path] = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if path.is_dir():
            found += sorted(
                (p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_slice_number
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not found:
        raise FileNotFoundError(f"{paths}: no PNG / TIFF images")
    if check:
        for path in found:
            check_image(path)
    return [str(p.resolve()) for p in found]


def as_flag(value: bool | str | int) -> bool:
    """A config switch as a bool; also the strings a command line gives (``false``, ``0``, ``no`` ...).

    ``python -m monai.bundle run --weight_map false`` passes the string "false", which is truthy.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"expected a true / false switch, got {value!r}")
        return text in ("true", "1", "yes", "on")
    return bool(value)


def membrane_from_label(label: torch.Tensor) -> torch.Tensor:
    """Label file values (255 cell, 0 membrane) -> classes (0 cell, 1 membrane), float."""
    return (label < MEMBRANE_BELOW).float()


def _load(keys: list[str]) -> list:
    """Read (PILReader), channel-first, z-score the image, label -> classes."""
    transforms: list = [
        LoadImaged(keys=keys, reader=PILReader, image_only=True),
        EnsureChannelFirstd(keys=keys),
        EnsureTyped(keys="image", dtype=torch.float32),
        NormalizeIntensityd(keys="image"),
    ]
    if "label" in keys:
        transforms.append(Lambdad(keys="label", func=membrane_from_label))
    return transforms


def build_em_train_transforms(
    patch_size: Sequence[int] = (256, 256),
    num_samples: int = 4,
    weight_map: bool | str = True,
    w0: float = 10.0,
    sigma: float = 5.0,
    elastic_prob: float = 0.8,
    elastic_spacing: Sequence[float] | None = None,
    elastic_magnitude: float = 10.0,
    flips: bool = True,
) -> Compose:
    """Training chain: load, weight map (cached), then random patches, flips / rot90, elastic deformation.

    With ``weight_map`` the label leaves the chain with two channels, (class, weight), which
    ``WeightedCrossEntropyLoss`` reads; without it, one (class): the loss then weighs all pixels alike.

    Args:
        patch_size: training patch (the whole 512x512 image is segmented at inference).
        num_samples: patches drawn from each image per epoch.
        weight_map: compute the border weight map (w0, sigma: eq. 2 of the paper) and carry it along.
        elastic_prob: probability of the elastic deformation per patch.
        elastic_spacing: control-point spacing in pixels; default half the patch, the paper's coarse
            3x3 grid over the tile.
        elastic_magnitude: standard deviation of the control points' displacements (10 px in the paper).
        flips: random flips along both axes and 90-degree rotations (EM sections have no orientation).
    """
    weight_map = as_flag(weight_map)
    keys = ["image", "label"] + (["weight"] if weight_map else [])
    transforms = _load(["image", "label"])
    if weight_map:
        transforms.append(BorderWeightMapd(keys="label", weight_key="weight", w0=w0, sigma=sigma))
    transforms.append(EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False))
    # Random from here: CacheDataset caches everything above, once per image.
    transforms += [
        RandSpatialCropSamplesd(
            keys=keys, roi_size=list(patch_size), num_samples=num_samples, random_size=False
        ),
        SpatialPadd(keys=keys, spatial_size=list(patch_size), mode="reflect"),
    ]
    if flips:
        transforms += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in (0, 1)]
        transforms.append(RandRotate90d(keys=keys, prob=0.5))
    spacing = elastic_spacing or [size / 2 for size in patch_size]
    # Label and weight: nearest, so classes stay classes and each weight stays its pixel's.
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    transforms.append(
        Rand2DElasticd(
            keys=keys,
            spacing=list(spacing),
            magnitude_range=(elastic_magnitude, elastic_magnitude),
            prob=elastic_prob,
            mode=modes,
            padding_mode="reflection",
        )
    )
    if weight_map:
        transforms += [ConcatItemsd(keys=["label", "weight"], name="label"), DeleteItemsd(keys="weight")]
    return Compose(transforms)


def build_em_eval_transforms(with_label: bool = True) -> Compose:
    """Validation / inference chain: the whole image, read and z-scored; no spatial transform to undo."""
    return Compose(_load(["image", "label"] if with_label else ["image"]))


def label_classes(label: torch.Tensor) -> torch.Tensor:
    """The class channel of a training label, without the weight map's channel."""
    return label[:1]


def membrane_to_label_file(pred: torch.Tensor) -> torch.Tensor:
    """Predicted classes (1 membrane) -> the label files' convention (1 = cell, written as 255)."""
    return 1.0 - pred
