"""Datalists: lists of ``{"image": path, "label": path}`` dictionaries for MONAI datasets."""

from __future__ import annotations

import json
from pathlib import Path

from monai.data import load_decathlon_datalist, partition_dataset

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Every single-file image format the pipeline reads: NIfTI, DICOM files, PNG and TIFF.
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".dcm", ".png", ".tif", ".tiff")


def case_name(path: str | Path) -> str:
    """The file name without its image suffix: ``a/b/case_001.nii.gz`` -> ``case_001``."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_files_exist(items: list[dict], source: str) -> None:
    """Raise one error listing every file a datalist names that does not exist."""
    missing = [str(p) for item in items for p in item.values() if isinstance(p, str) and not Path(p).exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{source} names {len(missing)} file(s) that do not exist: {shown}")


def msd_datalist(dataset_dir: str | Path, section: str = "training") -> list[dict]:
    """Read a Medical Segmentation Decathlon ``dataset.json`` into absolute-path items.

    Args:
        dataset_dir: folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        section: "training" (image + label) or "test" (image only).
    """
    dataset_json = Path(dataset_dir).resolve() / "dataset.json"
    if not dataset_json.is_file():
        raise FileNotFoundError(f"{dataset_json}: no dataset.json in {dataset_dir} (expected the MSD layout)")
    items = load_decathlon_datalist(str(dataset_json), is_segmentation=True, data_list_key=section)
    _check_files_exist(items, str(dataset_json))
    return items


def msd_label_names(dataset_dir: str | Path) -> dict[int, str]:
    """Label value -> name from an MSD ``dataset.json`` (``{0: "background", 1: "Anterior", ...}``)."""
    labels = json.loads((Path(dataset_dir) / "dataset.json").read_text())["labels"]
    return {int(value): name for value, name in labels.items()}


def folder_datalist(
    image_dir: str | Path,
    label_dir: str | Path | None = None,
    pattern: str = "*.nii.gz",
    label_suffix: str = "",
) -> list[dict]:
    """Pair images and labels that share a case name across two folders.

    Args:
        image_dir: folder of images matching ``pattern``.
        label_dir: folder of labels; ``None`` gives image-only items (inference).
        pattern: glob pattern of the image files.
        label_suffix: text between the case name and the suffix in label names (e.g. "_mask").
    """
    images = sorted(Path(image_dir).glob(pattern))
    if not images:
        raise FileNotFoundError(f"{image_dir}: no files match {pattern!r}")
    if label_dir is None:
        return [{"image": str(path)} for path in images]
    items = []
    for image in images:
        suffix = image.name[len(case_name(image)) :]
        label = Path(label_dir) / f"{case_name(image)}{label_suffix}{suffix}"
        items.append({"image": str(image), "label": str(label)})
    _check_files_exist(items, f"the pairing of {image_dir} with {label_dir}")
    return items


def split_datalist(
    items: list[dict], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Shuffle with ``seed`` and split into (train, validation); at least one case in each."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(items) < 2:
        raise ValueError(f"need at least 2 cases to split into train and validation, got {len(items)}")
    num_val = min(max(1, round(len(items) * val_fraction)), len(items) - 1)
    train, val = partition_dataset(items, ratios=[len(items) - num_val, num_val], shuffle=True, seed=seed)
    return list(train), list(val)
