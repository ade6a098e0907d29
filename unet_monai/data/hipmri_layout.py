"""The HipMRI project's data layout: folders of 2D NIfTI slices with given train / validate / test splits.

The HipMRI prostate study shipped its data as axial slices, one 2D NIfTI file each, in six folders::

    keras_slices_train/      case_004_week_0_slice_0.nii.gz ...   images
    keras_slices_seg_train/  seg_004_week_0_slice_0.nii.gz ...    multi-class masks
    keras_slices_validate/   keras_slices_seg_validate/
    keras_slices_test/       keras_slices_seg_test/

An image and its mask share a name except for the prefix (``case_`` for images, ``seg_`` for masks);
a mask of exactly the image's name is accepted too. ``hipmri_datalist`` reads one split into a MONAI
datalist and checks every pair: each error names the file and says what is wrong.

The HipMRI data are not here, so ``build_hipmri_fixture`` writes real multi-class slices in that
layout from the MSD hippocampus volumes (``python -m unet_monai.data.hipmri_layout --help``). Cases
are split before slicing, so the slices of one case are all in one split.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from unet_monai.data.datalists import msd_datalist
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


def _nifti_files(folder: Path) -> list[Path]:
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
    images = _nifti_files(images_folder)
    if not images:
        raise FileNotFoundError(f"{images_folder}: no .nii / .nii.gz slices")
    masks = {p.name: p for p in _nifti_files(masks_folder)}
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


def slice_affine(affine: np.ndarray, slice_axis: int, index: int) -> np.ndarray:
    """Affine of slice ``index`` along ``slice_axis`` of a volume, as a 2D image's 4x4 affine.

    Columns 0 and 1 are the volume's two other axes (in order), column 2 the slice normal, and the
    origin moves to the slice, so every pixel keeps its world position.
    """
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    result = np.eye(4)
    result[:3, 0] = affine[:3, in_plane[0]]
    result[:3, 1] = affine[:3, in_plane[1]]
    result[:3, 2] = affine[:3, slice_axis]
    result[:3, 3] = affine[:3, 3] + index * affine[:3, slice_axis]
    return result


def _save_slice(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _case_id(path: str) -> str:
    """``.../hippocampus_017.nii.gz`` -> ``017``."""
    name = Path(path).name.split(".")[0]
    return name.rsplit("_", 1)[-1]


def build_hipmri_fixture(
    source_dir: str | Path,
    output_dir: str | Path,
    num_cases: Sequence[int] = (8, 2, 10),
    slice_axis: int = 2,
    all_slices: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write slices of MSD volumes in the HipMRI layout, split by case.

    Args:
        source_dir: an MSD dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``), e.g.
            ``../shared/data/msd-hippocampus`` (3 classes).
        output_dir: the layout's root; its six folders are created.
        num_cases: cases for train, validate and test; the cases are shuffled with ``seed`` first.
        slice_axis: the volume axis to slice along (2: axial for RAS volumes).
        all_slices: also write slices without any foreground label (default: only slices with one).
        seed: the shuffle seed.
        overwrite: delete the NIfTI files already in the six folders first; without it, a folder
            that holds any is an error (so slices of two builds never mix).

    Returns the fixture's description (also written to ``OUTPUT/fixture.json``): the cases and the
    number of slices of each split.
    """
    if len(num_cases) != len(SPLITS) or min(num_cases) < 1:
        raise ValueError(f"num_cases needs one positive count per split {SPLITS}, got {list(num_cases)}")
    output_dir = Path(output_dir)
    folders = [folder(output_dir, split) for split in SPLITS for folder in (image_dir, mask_dir)]
    existing = [path for folder in folders if folder.is_dir() for path in _nifti_files(folder)]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0].parent}: holds NIfTI files already; pass overwrite to replace them"
        )
    items = msd_datalist(source_dir)
    if sum(num_cases) > len(items):
        raise ValueError(f"{source_dir} has {len(items)} cases, {sum(num_cases)} asked for")
    for path in existing:
        path.unlink()
    order = np.random.default_rng(seed).permutation(len(items))
    description: dict = {"source": str(Path(source_dir).resolve()), "slice_axis": slice_axis, "seed": seed}
    start = 0
    for split, count in zip(SPLITS, num_cases, strict=True):
        chosen = [items[i] for i in order[start : start + count]]
        start += count
        images_out, masks_out = image_dir(output_dir, split), mask_dir(output_dir, split)
        images_out.mkdir(parents=True, exist_ok=True)
        masks_out.mkdir(parents=True, exist_ok=True)
        num_slices = 0
        for item in chosen:
            volume = nib.load(item["image"])
            image = np.asarray(volume.dataobj)
            label = np.asarray(nib.load(item["label"]).dataobj).astype(np.uint8)
            for index in range(image.shape[slice_axis]):
                label_slice = np.take(label, index, axis=slice_axis)
                if not all_slices and not label_slice.any():
                    continue
                affine = slice_affine(volume.affine, slice_axis, index)
                name = f"{IMAGE_PREFIX}{_case_id(item['image'])}_slice_{index}.nii.gz"
                _save_slice(np.take(image, index, axis=slice_axis), affine, images_out / name)
                _save_slice(label_slice, affine, masks_out / mask_name(name))
                num_slices += 1
        description[split] = {"cases": [Path(i["image"]).name for i in chosen], "slices": num_slices}
    (output_dir / "fixture.json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unet_monai.data.hipmri_layout",
        description="Write real multi-class slices (MSD hippocampus volumes) in the HipMRI layout: "
        "keras_slices_{train,validate,test}/case_*.nii.gz, keras_slices_seg_*/seg_*.nii.gz, split by case.",
    )
    parser.add_argument("--source", default="../shared/data/msd-hippocampus", help="MSD dataset folder")
    parser.add_argument("--output", default="/tmp/hipmri_slices", help="the layout's root folder")
    parser.add_argument(
        "--cases", type=int, nargs=3, default=[8, 2, 10], metavar=("TRAIN", "VALIDATE", "TEST")
    )
    parser.add_argument("--slice-axis", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--all-slices", action="store_true", help="also write slices without foreground")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace the slices of an earlier build")
    args = parser.parse_args(argv)
    description = build_hipmri_fixture(
        args.source, args.output, args.cases, args.slice_axis, args.all_slices, args.seed, args.overwrite
    )
    counts = ", ".join(f"{split} {description[split]['slices']}" for split in SPLITS)
    print(f"HipMRI layout in {args.output}: slices {counts} (cases {list(args.cases)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
