"""The HipMRI project's data layout: folders of 2D NIfTI slices with given train / validate / test splits.

The HipMRI prostate study shipped its data as axial slices, one 2D NIfTI file each, in six folders::

    keras_slices_train/      case_004_week_0_slice_0.nii.gz ...   images
    keras_slices_seg_train/  seg_004_week_0_slice_0.nii.gz ...    multi-class masks
    keras_slices_validate/   keras_slices_seg_validate/
    keras_slices_test/       keras_slices_seg_test/

An image and its mask share a name except for the prefix (``case_`` for images, ``seg_`` for masks);
a mask of exactly the image's name is accepted too. ``hipmri_datalist`` reads one split into a MONAI
datalist and checks every pair: each error names the file and says what is wrong.

The HipMRI data are not here, so the tests and the bundle's docs use a fixture of real multi-class
slices in that layout, written from the MSD hippocampus volumes by ``tools/hipmri_fixture.py``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from unet_monai.io import NIFTI_SUFFIXES

SPLITS = ("train", "validate", "test")
IMAGE_PREFIX = "case_"
MASK_PREFIX = "seg_"


def image_dir(root: str | Path, split: str) -> Path:
    """The image folder of a split: ``ROOT/keras_slices_<split>``."""
    _check_split(split)
    return Path(root) / f"keras_slices_{split}"


def mask_dir(root: str | Path, split: str) -> Path:
    """The mask folder of a split: ``ROOT/keras_slices_seg_<split>``."""
    _check_split(split)
    return Path(root) / f"keras_slices_seg_{split}"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def mask_name(image_name: str) -> str:
    """The mask file name of an image: ``case_004_slice_0.nii.gz`` -> ``seg_004_slice_0.nii.gz``.

    Names without the ``case_`` prefix keep their name (the mask then has the image's name).
    """
    if image_name.startswith(IMAGE_PREFIX):
        return MASK_PREFIX + image_name[len(IMAGE_PREFIX) :]
    return image_name


def prediction_name_formatter(metadict: dict, saver: object) -> dict:
    """``SaveImaged`` naming: a prediction gets the layout's mask name (``case_X`` -> ``seg_X``).

    The predicted masks of ``keras_slices_test/`` then pair with ``keras_slices_seg_test/`` by name.
    An input without the ``case_`` prefix gives ``<name>_seg``. Use with ``output_postfix=""``.
    """
    source = Path(str(metadict.get("filename_or_obj", "prediction")))
    name = source.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    subject = mask_name(name) if name.startswith(IMAGE_PREFIX) else f"{name}_seg"
    return {"subject": subject, "idx": metadict.get("patch_index")}


def _load_nifti(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file; a ValueError naming the file when nibabel cannot read it."""
    try:
        return nib.load(path)
    except Exception as error:  # nibabel raises several kinds for damaged files
        raise ValueError(f"{path}: not a readable NIfTI file ({error})") from error


def _spatial_shape(path: Path, image: nib.Nifti1Image) -> tuple[int, ...]:
    """The shape of a 2D slice (a trailing axis of length 1 is dropped); an error for a volume."""
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 2:
        raise ValueError(f"{path}: shape {tuple(image.shape)} is not a 2D slice")
    return shape


def _check_pair(image_path: Path, label_path: Path, num_classes: int | None) -> None:
    """Raise a ValueError naming the file if a mask does not fit its image or its classes."""
    image_shape = _spatial_shape(image_path, _load_nifti(image_path))
    label = _load_nifti(label_path)
    label_shape = _spatial_shape(label_path, label)
    if label_shape != image_shape:
        raise ValueError(
            f"{label_path}: mask of shape {label_shape}, but its image {image_path} is {image_shape}"
        )
    if num_classes is None:
        return
    try:
        values = np.unique(np.asarray(label.dataobj))
    except Exception as error:
        raise ValueError(f"{label_path}: mask data cannot be read ({error})") from error
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
        raise ValueError(f"{label_path}: mask holds non-integer values; expected labels 0..{num_classes - 1}")
    outside = [int(v) for v in values if v < 0 or v >= num_classes]
    if outside:
        raise ValueError(f"{label_path}: label values {outside} outside the classes 0..{num_classes - 1}")


def nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def hipmri_datalist(
    root: str | Path, split: str, num_classes: int | None = None, check: bool = True
) -> list[dict]:
    """``[{"image": path, "label": path}, ...]`` (absolute paths, sorted) for one split of the layout.

    Args:
        root: the folder holding ``keras_slices_<split>/`` and ``keras_slices_seg_<split>/``.
        split: "train", "validate" or "test".
        num_classes: classes including background; masks with other values are an error. ``None``
            skips reading the masks' values.
        check: open every pair and check that both are 2D slices of one shape (and the label values).

    Raises:
        FileNotFoundError: a folder is missing or empty, an image has no mask, or a mask no image.
        ValueError: a file is not a readable 2D NIfTI slice, a mask's shape differs from its image's,
            or a mask holds values outside ``0..num_classes - 1``.
    """
    images_folder = image_dir(root, split).resolve()
    masks_folder = mask_dir(root, split).resolve()
    for folder in (images_folder, masks_folder):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder (expected the HipMRI layout in {root})")
    images = nifti_files(images_folder)
    if not images:
        raise FileNotFoundError(f"{images_folder}: no .nii / .nii.gz slices")
    masks = {p.name: p for p in nifti_files(masks_folder)}
    items = []
    for image in images:
        label = masks.pop(mask_name(image.name), None) or masks.pop(image.name, None)
        if label is None:
            raise FileNotFoundError(
                f"{image}: image without a mask ({mask_name(image.name)} not in {masks_folder})"
            )
        items.append({"image": str(image), "label": str(label)})
    if masks:
        extra = sorted(masks.values())[0]
        raise FileNotFoundError(
            f"{extra}: mask without an image in {images_folder} ({len(masks)} such mask(s))"
        )
    if check:
        for item in items:
            _check_pair(Path(item["image"]), Path(item["label"]), num_classes)
    return items
