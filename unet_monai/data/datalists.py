"""Datalists: lists of ``{"image": path, "label": path}`` dictionaries for MONAI datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist, partition_dataset

from unet_monai.checks import BadInputError
from unet_monai.io import IMAGE_SUFFIXES


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


def _read_json(path: Path) -> object:
    """A JSON file's content; a file that is not valid JSON (or not UTF-8 text) is one ``BadInputError``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise BadInputError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise BadInputError(
            f"{path}: not valid JSON (line {error.lineno} column {error.colno}: {error.msg})"
        ) from None


def _check_msd_entries(description: object, dataset_json: Path, section: str) -> None:
    """The ``section`` of a parsed ``dataset.json``: a non-empty list of cases with file-path values."""
    if not isinstance(description, dict):
        raise BadInputError(f"{dataset_json}: must hold a JSON object, got a {type(description).__name__}")
    if section not in description:
        raise BadInputError(f"{dataset_json}: no {section!r} list (the MSD layout lists its cases there)")
    entries = description[section]
    if not isinstance(entries, list):
        raise BadInputError(
            f"{dataset_json}: {section!r} must be a list of cases, got a {type(entries).__name__}"
        )
    if not entries:
        raise BadInputError(f"{dataset_json}: {section!r} lists no cases")
    required = ("image", "label") if section == "training" else ("image",)
    for index, entry in enumerate(entries):
        where = f"{section}[{index}]"
        if section == "test" and isinstance(entry, str):
            continue  # MSD lists test images as plain paths
        if not isinstance(entry, dict):
            raise BadInputError(
                f"{dataset_json}: {where} must be an object with {' and '.join(required)} paths"
            )
        for key in required:
            if key not in entry:
                raise BadInputError(f"{dataset_json}: {where} has no {key!r}")
            value = entry[key]
            paths = value if isinstance(value, list) else [value]
            if not paths or not all(isinstance(p, str) and p for p in paths):
                raise BadInputError(
                    f"{dataset_json}: {where}[{key!r}] must be a file path (a string), got {value!r}"
                )


def _check_msd_paths(entries: list, items: list[dict], dataset_json: Path) -> None:
    """Every path of ``items`` (resolved from ``entries``) lies in the data folder; no case twice."""
    root = os.path.normpath(dataset_json.parent)
    first_index: dict[tuple[str, ...], int] = {}
    for index, (entry, item) in enumerate(zip(entries, items, strict=True)):
        written = entry if isinstance(entry, dict) else {"image": entry}
        for key in ("image", "label"):
            values = item.get(key)
            for given, path in zip(_as_list(written.get(key)), _as_list(values), strict=False):
                # Lexical (not through symbolic links): a data folder may link imagesTr/ to other storage.
                if os.path.commonpath([root, os.path.normpath(path)]) != root:
                    raise BadInputError(f"{dataset_json}: entry outside the data folder {root}: {given}")
        case = tuple(os.path.realpath(p) for p in _as_list(item["image"]))
        if case in first_index:
            shown = ", ".join(_as_list(written["image"]))
            raise BadInputError(
                f"{dataset_json}: case listed twice: {shown} (entries {first_index[case]} and {index}); "
                "it could land in both training and validation"
            )
        first_index[case] = index


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def msd_datalist(dataset_dir: str | Path, section: str = "training") -> list[dict]:
    """Read a Medical Segmentation Decathlon ``dataset.json`` into absolute-path items.

    A malformed file (not JSON, no ``section`` list, entries without file paths), an entry outside the
    dataset folder (``../``, an absolute path elsewhere) or a case listed twice is one ``BadInputError``
    naming ``dataset.json``; missing files are one ``FileNotFoundError`` listing them.

    Args:
        dataset_dir: folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        section: "training" (image + label) or "test" (image only).
    """
    dataset_json = Path(dataset_dir).resolve() / "dataset.json"
    if not dataset_json.is_file():
        raise FileNotFoundError(f"{dataset_json}: no dataset.json in {dataset_dir} (expected the MSD layout)")
    description = _read_json(dataset_json)
    _check_msd_entries(description, dataset_json, section)
    items = load_decathlon_datalist(str(dataset_json), is_segmentation=True, data_list_key=section)
    _check_msd_paths(description[section], items, dataset_json)
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


def fold_split(
    items: list[dict], num_folds: int = 5, fold: int = 0, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(train, validation) for fold ``fold`` of ``num_folds``: the cases shuffled with ``seed`` and cut
    into ``num_folds`` parts (MONAI's ``partition_dataset``); part ``fold`` validates, the others train.
    The same seed gives every fold the same partition, so the folds' validation sets cover every case once."""
    if num_folds < 2:
        raise ValueError(f"num_folds: must be at least 2, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold: must be between 0 and {num_folds - 1}, got {fold}")
    if len(items) < num_folds:
        raise ValueError(f"num_folds: {num_folds} folds need at least {num_folds} cases, got {len(items)}")
    parts = partition_dataset(items, num_partitions=num_folds, shuffle=True, seed=seed)
    train = [item for index, part in enumerate(parts) if index != fold for item in part]
    return train, list(parts[fold])
