"""The left-ventricle project's layout: 2D DICOM images with PNG masks, and the chains that read it.

Layout (``dataset_dir``)::

    training/<name>.dcm   training/<name>.png      the mask beside its image
    test/<name>.dcm       test/GT/<name>.png       test masks in their own folder

Masks are single-channel PNG files of the image's size; any non-zero pixel is foreground.

Images are read by MONAI's ``PydicomReader``, which applies the rescale slope and intercept (the
modality LUT) but ignores the photometric interpretation: a MONOCHROME1 image (smallest value
shown white) comes out inverted. ``Monochrome1ToMonochrome2d`` fixes that. Bad input is caught
before any training starts, each case with one line naming the file: ``lv_datalist`` reads every
DICOM file (header and pixels) and checks that its mask exists and has its size.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    ResizeWithPadOrCropd,
)
from PIL import Image

from unet_monai.io import error_line
from unet_monai.transforms.chains import augmentation_transforms, intensity_transform, patch_sampling

# Where images and masks live for each section of the layout, relative to dataset_dir.
SECTIONS = {"training": ("training", "training"), "test": ("test", "test/GT")}
# The header tags PydicomReader keeps when it prunes metadata (orientation, position, spacing).
GEOMETRY_TAGS = ("00200037", "00200032", "00280030")
_TAG_KEY = re.compile(r"^[0-9A-F]{8}$")
MULTI_CHANNEL_MODES = ("RGB", "RGBA", "LA", "CMYK", "YCbCr", "HSV", "LAB")


def check_dicom_image(path: str | Path) -> tuple[int, int]:
    """Read a DICOM file's header and pixels; returns its (rows, columns).

    Raises:
        ValueError: naming the file, when it is not DICOM, has no pixel data or cannot be decoded.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, OSError, struct.error ...
        raise ValueError(f"{path}: not a readable DICOM file ({error_line(error)})") from error
    if "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM file without pixel data (not an image)")
    try:
        pixels = ds.pixel_array
    except Exception as error:
        raise ValueError(f"{path}: DICOM pixel data cannot be decoded ({error_line(error)})") from error
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected one 2D grey-scale image, got pixel data of shape {pixels.shape}")
    return int(ds.Rows), int(ds.Columns)


def check_mask(mask: Path, image: Path, rows: int, columns: int) -> None:
    """Check that the PNG mask of ``image`` exists, is single-channel and has the image's size."""
    if not mask.is_file():
        raise FileNotFoundError(f"{image}: no PNG mask (expected {mask})")
    try:
        with Image.open(mask) as png:
            width, height, mode = png.width, png.height, png.mode
    except Exception as error:
        raise ValueError(f"{mask}: not a readable PNG mask ({error_line(error)})") from error
    if (width, height) != (columns, rows):
        raise ValueError(
            f"{mask}: mask is {width}x{height} pixels but its image {image} is {columns}x{rows} "
            "(width x height)"
        )
    if mode in MULTI_CHANNEL_MODES:
        raise ValueError(f"{mask}: mask has {mode} channels; expected a single-channel (grey-scale) PNG")


def dicom_files(path: str | Path) -> list[str]:
    """One ``.dcm`` file, or every ``.dcm`` file of a folder, checked and as absolute paths (inference)."""
    path = Path(path)
    files = sorted(path.glob("*.dcm")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise FileNotFoundError(f"{path}: folder holds no .dcm files")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    for file in files:
        check_dicom_image(file)
    return [str(file.resolve()) for file in files]


def lv_datalist(dataset_dir: str | Path, section: str = "training") -> list[dict]:
    """``{"image": .dcm, "label": .png}`` items of one section of the layout, every file checked.

    Args:
        dataset_dir: the folder holding ``training/`` and ``test/``.
        section: "training" (masks beside the images) or "test" (masks in ``test/GT/``).

    Raises:
        FileNotFoundError: the section folder has no ``.dcm`` files, or an image has no mask.
        ValueError: a DICOM file is corrupt or a mask has the wrong size, naming the file.
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {sorted(SECTIONS)}, got {section!r}")
    image_dir, mask_dir = (Path(dataset_dir).resolve() / sub for sub in SECTIONS[section])
    images = sorted(image_dir.glob("*.dcm"))
    if not images:
        expected = f"{SECTIONS[section][0]}/*.dcm"
        raise FileNotFoundError(f"{image_dir}: no .dcm files (expected the layout {expected})")
    items = []
    for image in images:
        rows, columns = check_dicom_image(image)
        mask = mask_dir / f"{image.stem}.png"
        check_mask(mask, image, rows, columns)
        items.append({"image": str(image), "label": str(mask)})
    return items


def _tag_value(meta: Mapping, tag: str, default: object = None) -> object:
    """The first value of a DICOM tag in PydicomReader's JSON-style metadata (``{"vr":, "Value": [...]}``)."""
    element = meta.get(tag)
    if not isinstance(element, Mapping) or not element.get("Value"):
        return default
    return element["Value"][0]


def monochrome2_offset(meta: Mapping) -> float | None:
    """For a MONOCHROME1 image, ``c`` such that ``c - value`` is its MONOCHROME2 equivalent; else None.

    MONOCHROME1 shows the smallest stored value as white. Reflecting the stored values over the
    range that ``BitsStored`` / ``PixelRepresentation`` allow (``low + high - stored``) gives the
    MONOCHROME2 image; after the modality LUT ``value = slope * stored + intercept`` that reflection
    is ``slope * (low + high) + 2 * intercept - value``.
    """
    if str(_tag_value(meta, "00280004", "")).strip().upper() != "MONOCHROME1":
        return None
    bits = int(_tag_value(meta, "00280101", 16))
    signed = int(_tag_value(meta, "00280103", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(_tag_value(meta, "00281053", 1.0))
    intercept = float(_tag_value(meta, "00281052", 0.0))
    return slope * (low + high) + 2.0 * intercept


class Monochrome1ToMonochrome2d(MapTransform):
    """Make DICOM images loaded by ``PydicomReader`` read as MONOCHROME2 (larger value = brighter).

    Needs the header in the metadata: load with ``LoadImaged(reader="PydicomReader",
    prune_metadata=False)``. MONOCHROME1 images are reflected (see ``monochrome2_offset``); the
    rescale slope / intercept is already applied by the reader. Afterwards the header tags are
    dropped from the metadata (``prune_header``), except orientation, position and spacing, as the
    reader's own pruning does, so that batches collate.
    """

    def __init__(self, keys: KeysCollection, prune_header: bool = True, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.prune_header = prune_header

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not isinstance(image, MetaTensor):
                kind = type(image).__name__
                raise TypeError(f"{key!r}: expected a MetaTensor with the DICOM header, got {kind}")
            if "00280004" not in image.meta:
                source = image.meta.get("filename_or_obj", key)
                raise ValueError(
                    f"{source}: no PhotometricInterpretation in the metadata; "
                    "load with LoadImaged(reader='PydicomReader', prune_metadata=False)"
                )
            offset = monochrome2_offset(image.meta)
            if offset is not None:
                image = offset - image
            image.meta["photometric_interpretation"] = "MONOCHROME2"
            if self.prune_header:
                for tag in [k for k in image.meta if isinstance(k, str) and _TAG_KEY.match(k)]:
                    if tag not in GEOMETRY_TAGS:
                        del image.meta[tag]
            d[key] = image
        return d


def load_transforms(image_key: str = "image", label_key: str | None = "label") -> list:
    """Read a DICOM image (rescaled, MONOCHROME2) and its PNG mask (binarised) channel-first."""
    transforms: list = [
        LoadImaged(keys=image_key, reader="PydicomReader", image_only=True, prune_metadata=False),
        Monochrome1ToMonochrome2d(keys=image_key),
    ]
    keys = [image_key]
    if label_key is not None:
        transforms.append(LoadImaged(keys=label_key, reader="PILReader", image_only=True))
        keys.append(label_key)
    transforms.append(EnsureChannelFirstd(keys=keys))
    if label_key is not None:
        transforms.append(AsDiscreted(keys=label_key, threshold=0.5))
    return transforms


def lv_train_transforms(
    image_key: str = "image",
    label_key: str = "label",
    percentiles: Sequence[float] = (5.0, 95.0),
    crop_size: Sequence[int] = (128, 128),
    whole_image: bool = False,
    num_samples: int = 1,
    pos_fraction: float = 0.5,
    augment: bool = False,
    aug_prob: float = 0.2,
    rotate_degrees: float = 15.0,
    scale: float = 0.15,
    flip_axes: Sequence[int] = (),
) -> Compose:
    """Training chain: read, scale by the image's percentiles to [0, 1], crop, optionally augment.

    Args:
        percentiles: lower / upper intensity percentiles mapped to 0 / 1 (clipped), per image.
        crop_size: the network's input size.
        whole_image: ``False``: the centre crop of ``crop_size`` (the LV project's recipe; anything
            outside it is never seen). ``True``: ``num_samples`` random crops anywhere in the image,
            centred on the mask with probability ``pos_fraction``; evaluate with a sliding window.
        augment: random affine (``rotate_degrees``, ``scale``), ``flip_axes`` mirrors, noise and
            intensity changes, each with probability ``aug_prob`` (mirrors 0.5).
    """
    keys = [image_key, label_key]
    transforms = load_transforms(image_key, label_key)
    transforms += intensity_transform(image_key, "percentile", percentiles[0], percentiles[1])
    transforms.append(EnsureTyped(keys=keys, dtype="float32", track_meta=False))
    if whole_image:
        transforms += patch_sampling(keys, label_key, crop_size, num_samples, pos_fraction)
    else:
        transforms.append(ResizeWithPadOrCropd(keys=keys, spatial_size=list(crop_size)))
    if augment:
        transforms += augmentation_transforms(
            keys, image_key, 2, aug_prob, rotate_degrees, scale, flip_axes=flip_axes
        )
    return Compose(transforms)


def lv_eval_transforms(
    image_key: str = "image",
    label_key: str | None = "label",
    percentiles: Sequence[float] = (5.0, 95.0),
    crop_size: Sequence[int] = (128, 128),
    whole_image: bool = False,
) -> Compose:
    """Validation / inference chain: read, scale, and centre-crop unless ``whole_image``.

    ``Invertd`` undoes the crop (zeros outside it), so masks land on the input's grid.
    ``label_key=None`` for inference without masks.
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    transforms = load_transforms(image_key, label_key)
    transforms += intensity_transform(image_key, "percentile", percentiles[0], percentiles[1])
    if not whole_image:
        transforms.append(ResizeWithPadOrCropd(keys=keys, spatial_size=list(crop_size)))
    transforms.append(EnsureTyped(keys=keys, dtype="float32"))
    return Compose(transforms)


def preview_images(
    items: Sequence[Mapping], output_dir: str | Path, percentiles: Sequence[float] = (5.0, 95.0)
) -> dict[str, str]:
    """Write each item's image as an 8-bit grey PNG the size of its mask; returns ``{case: PNG path}``.

    The evaluation report draws its best / median / worst overlays from these: they are read like
    the masks (MONAI's PIL reader), so image and mask share one grid, and they show the image as
    the network sees it (MONOCHROME2, scaled by its percentiles).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    scaling = intensity_transform("image", "percentile", percentiles[0], percentiles[1])
    chain = Compose(load_transforms("image", None) + scaling)
    previews = {}
    for item in items:
        image = chain({"image": item["image"]})["image"][0].numpy()  # indexed [column, row]
        path = output_dir / f"{Path(item['label']).stem}.png"
        Image.fromarray((image.T * 255).round().astype("uint8"), mode="L").save(path)
        previews[path.stem] = str(path)
    return previews


__all__ = [
    "Monochrome1ToMonochrome2d",
    "check_dicom_image",
    "check_mask",
    "dicom_files",
    "load_transforms",
    "lv_datalist",
    "lv_eval_transforms",
    "lv_train_transforms",
    "monochrome2_offset",
    "preview_images",
]
