"""The dataset fingerprint: what a planner needs to know about a user's labelled images.

Input: an MSD folder (``dataset.json`` with ``modality`` or ``channel_names``, ``labels`` and a
``training`` list; 4D images with channels last as MSD ships them, or a list of files per channel), an
nnU-Net v2 raw folder (no list: ``imagesTr/<case>_<XXXX><ending>``, ``labelsTr/<case><ending>``) or a
folder of images and a folder of labels paired by file name (NIfTI, NRRD, MHA, PNG, TIFF). Images are read
as the pipeline reads them (MONAI's ``LoadImage``, channel first).

Per case: shape, spacing, orientation (axis codes), shape after cropping to the non-zero region (as
nnU-Net does), intensity statistics inside the foreground (label > 0) per channel, whole-image and
body (background fill excluded) mean / std, label values present, per-class voxel fractions and
connected object sizes (face connectivity).
Dataset-wide: median / min / max spacing and shape (RAS axis order for 3D images: the order after the
pipeline's reorientation; as stored for 2D images), anisotropy, intensity percentiles per channel from a
seeded sample of foreground voxels (each case sampled equally, with replacement, as nnU-Net does), class
frequencies, object sizes, and whether the images look already normalised (mean ~0, std ~1).

Bad input is one ``BadInputError`` naming the file and the problem. Cases are read by several processes;
the result does not depend on their number (each case's sample is seeded by its index).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from unet_monai.checks import BadInputError, check_image, check_label, check_pair
from unet_monai.data.datalists import case_name, folder_datalist, msd_datalist
from unet_monai.io import error_line, write_json
from unet_monai.transforms.checks import CheckedLoadImage, check_geometry

FINGERPRINT_VERSION = 1
# Suffixes of the image files a folder of images may hold.
FOLDER_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff")
PERCENTILES = (0.5, 50.0, 99.5)
# Foreground voxels sampled over the whole dataset for its intensity percentiles (nnU-Net: 1e8).
TOTAL_SAMPLES = 1_000_000
MIN_SAMPLES_PER_CASE = 1_000
MAX_SAMPLES_PER_CASE = 100_000
# Spacing ratio from which a dataset counts as anisotropic (nnU-Net's threshold for a thick axis).
ANISOTROPY_THRESHOLD = 3.0
# Already normalised (z-scored): over the image or its body (the voxels not holding the background fill
# value), |mean| <= NORMALISED_MEAN and NORMALISED_STD[0] <= std <= NORMALISED_STD[1] ... Loose on
# purpose: BraTS's z-scored volumes have std 1.3 - 1.8 over the brain; raw MR, CT or 8-bit intensities
# are far outside.
NORMALISED_MEAN = 0.5
NORMALISED_STD = (0.5, 2.0)
# ... in at least this fraction of the cases.
NORMALISED_CASE_FRACTION = 0.9
# A channel's minimum is its background fill value when at least this fraction of voxels holds it.
FILL_FRACTION = 0.05
SIGNIFICANT_DIGITS = 6
DEFAULT_SEED = 1234


def default_workers() -> int:
    """min(CPU count, 4) processes."""
    return max(1, min(os.cpu_count() or 1, 4))


def _round(value: float) -> float:
    """A float rounded to ``SIGNIFICANT_DIGITS`` significant digits (readable JSON)."""
    return float(f"{float(value):.{SIGNIFICANT_DIGITS}g}")


def _rounded(values: Sequence[float] | np.ndarray) -> list[float]:
    return [_round(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _summary(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """min / median / max of a non-empty sequence."""
    array = np.asarray(values, dtype=np.float64)
    return {"min": _round(array.min()), "median": _round(np.median(array)), "max": _round(array.max())}


def _axis_summary(rows: list[list[float]]) -> dict[str, list[float]]:
    """Per-axis median / min / max of equal-length rows (spacings, shapes)."""
    array = np.asarray(rows, dtype=np.float64)
    return {
        "median": _rounded(np.median(array, axis=0)),
        "min": _rounded(array.min(axis=0)),
        "max": _rounded(array.max(axis=0)),
    }


# --- the dataset's cases --------------------------------------------------------------------------


def _declared_labels(labels: object, dataset_json: Path) -> dict[int, str]:
    """``labels`` of a dataset.json as value -> name: MSD (``{"1": "liver"}``) or nnU-Net v2
    (``{"liver": 1}``; a region's list of values counts each value)."""
    if not isinstance(labels, dict) or not labels:
        raise BadInputError(f"{dataset_json}: 'labels' must be a non-empty object of label values and names")
    declared: dict[int, str] = {}
    for key, value in labels.items():
        if str(key).lstrip("-").isdigit():
            declared[int(key)] = str(value)
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise BadInputError(
                f"{dataset_json}: 'labels' entry {key!r}: {value!r} is not a label value; use "
                '{"1": "name"} (MSD) or {"name": 1} (nnU-Net)'
            )
        for v in values:
            declared.setdefault(int(v), str(key))
    return dict(sorted(declared.items()))


def _channel_names(description: dict, dataset_json: Path) -> list[str] | None:
    """Channel names from ``channel_names`` (nnU-Net v2) or ``modality`` (MSD), in index order."""
    names = description.get("channel_names", description.get("modality"))
    if names is None:
        return None
    if not isinstance(names, dict) or not all(str(k).isdigit() for k in names):
        raise BadInputError(
            f"{dataset_json}: 'modality' / 'channel_names' must map channel indices to names, got {names!r}"
        )
    return [str(names[k]) for k in sorted(names, key=int)]


def nnunet_raw_items(root: Path, description: dict, dataset_json: Path) -> list[dict]:
    """Cases of nnU-Net v2's raw layout: ``labelsTr/<case><ending>`` and one
    ``imagesTr/<case>_<XXXX><ending>`` per channel of ``channel_names``."""
    ending = str(description["file_ending"])
    channels = len(_channel_names(description, dataset_json) or [])
    if channels == 0:
        raise BadInputError(f"{dataset_json}: no 'channel_names' (nnU-Net layout: channel index -> name)")
    labels = sorted((root / "labelsTr").glob(f"*{ending}"))
    if not labels:
        raise BadInputError(f"{root / 'labelsTr'}: empty dataset: no label files ending in {ending}")
    items = []
    for label in labels:
        case = label.name[: -len(ending)]
        images = [root / "imagesTr" / f"{case}_{channel:04d}{ending}" for channel in range(channels)]
        missing = [path for path in images if not path.is_file()]
        if missing:
            raise BadInputError(
                f"{missing[0]}: no such file (nnU-Net layout: imagesTr/{case}_XXXX{ending} for each of the "
                f"{channels} channel(s) of dataset.json, beside {label})"
            )
        items.append(
            {"image": [str(p) for p in images] if channels > 1 else str(images[0]), "label": str(label)}
        )
    return items


def msd_cases(data_dir: str | Path) -> tuple[list[dict], dict[int, str] | None, list[str] | None, str]:
    """Cases, declared labels, channel names and the source name of an MSD folder (a ``training`` list) or
    of nnU-Net v2's raw layout (no list; ``file_ending`` and ``channel_names``)."""
    dataset_json = Path(data_dir).resolve() / "dataset.json"
    if not dataset_json.is_file():
        raise BadInputError(
            f"{dataset_json}: no dataset.json; give an MSD folder, or a folder of images and one of labels "
            "(--images DIR --labels DIR)"
        )
    try:
        description = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        description = None  # msd_datalist says what is wrong with it
    if isinstance(description, dict) and "training" not in description and "file_ending" in description:
        items = nnunet_raw_items(dataset_json.parent, description, dataset_json)
    else:
        try:
            items = msd_datalist(data_dir)
        except FileNotFoundError as error:
            raise BadInputError(error_line(error)) from None
    if "labels" not in description:
        raise BadInputError(f"{dataset_json}: no 'labels' object (label value -> name)")
    labels = _declared_labels(description["labels"], dataset_json)
    return items, labels, _channel_names(description, dataset_json), str(dataset_json)


def folder_cases(images_dir: str | Path, labels_dir: str | Path) -> tuple[list[dict], str]:
    """Cases of a folder of images and a folder of labels with the same file names."""
    images, labels = Path(images_dir), Path(labels_dir)
    for folder in (images, labels):
        if not folder.is_dir():
            raise BadInputError(f"{folder}: no such folder")
    items: list[dict] = []
    for suffix in FOLDER_SUFFIXES:  # "*.nii" matches no "x.nii.gz": no file twice
        if any(images.glob(f"*{suffix}")):
            try:
                items += folder_datalist(images, labels, pattern=f"*{suffix}")
            except FileNotFoundError as error:
                raise BadInputError(f"{labels}: label file missing ({error_line(error)})") from None
    if not items:
        raise BadInputError(f"{images}: empty dataset: no image files ({', '.join(FOLDER_SUFFIXES)})")
    items.sort(key=lambda item: item["image"])
    return items, f"{images} + {labels}"


def _first_path(image: str | list[str]) -> str:
    """An image's file (its first, when each channel has its own file)."""
    return str(image[0] if isinstance(image, list) else image)


def _case_id(item: dict) -> str:
    """The case's name: its label file's name without the suffix (images may carry a channel index)."""
    name = case_name(item["label"])
    for suffix in FOLDER_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --- one case (runs in a worker process) ----------------------------------------------------------


def _worker_init() -> None:
    """One torch thread per worker: the checks run on small arrays, where more threads only contend (7x
    slower on two busy cores)."""
    torch.set_num_threads(1)


@functools.cache
def _loader() -> CheckedLoadImage:
    """The pipeline's reader (one per process: constructing it logs the DICOM plugin notice)."""
    return CheckedLoadImage(image_only=True, dtype=None, ensure_channel_first=True)


def _load(path: str | list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """(channel-first array, affine, dtype as stored) through the pipeline's reader; read failures are
    one ``BadInputError``."""
    first = _first_path(path)
    try:
        loaded = _loader()(path)
    except RuntimeError as error:
        # ITK's readers (NRRD, MHA, TIFF) fail with RuntimeErrors, which ``read_error`` leaves alone.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = next((line for line in lines if "ITK ERROR" in line or "Could not" in line), lines[0])
        raise BadInputError(f"{first}: unreadable or corrupt image file ({reason})") from None
    check_geometry(loaded, str(first))
    return np.asarray(loaded), np.asarray(loaded.affine, dtype=np.float64), str(np.asarray(loaded).dtype)


def _geometry(affine: np.ndarray, spatial_dims: int) -> tuple[list[float], list[str], list[int] | None]:
    """Spacing (array axis order), axis codes, and each array axis's index in RAS order (3D only)."""
    matrix = affine[:spatial_dims, :spatial_dims]
    spacing = np.linalg.norm(matrix, axis=0)
    codes = list(nib.orientations.aff2axcodes(affine))[:spatial_dims]
    if spatial_dims != 3 or affine.shape != (4, 4):
        return _rounded(spacing), codes, None
    ras_axis = [int(a) for a in nib.orientations.io_orientation(affine)[:, 0]]
    return _rounded(spacing), codes, ras_axis


def _to_ras(values: list, ras_axis: list[int] | None) -> list:
    """Per-axis values in RAS order (``ras_axis[i]``: the RAS index of array axis ``i``); as given
    without one."""
    if ras_axis is None:
        return list(values)
    ordered = list(values)
    for axis, target in enumerate(ras_axis):
        ordered[target] = values[axis]
    return ordered


def _crop_shape(image: np.ndarray) -> list[int]:
    """The shape of the bounding box of voxels non-zero in any channel (the whole shape if none)."""
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        return list(nonzero.shape)
    extents = []
    for axis in range(nonzero.ndim):
        present = np.flatnonzero(np.any(nonzero, axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        extents.append(int(present[-1] - present[0] + 1))
    return extents


def _mean_std(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {"mean": _round(values.mean(dtype=np.float64)), "std": _round(values.std(dtype=np.float64))}


def _foreground_statistics(values: np.ndarray) -> dict[str, float] | None:
    """Percentiles 0.5 / 50 / 99.5, mean, std, min, max of one channel's foreground voxels."""
    if values.size == 0:
        return None
    low, median, high = np.percentile(values, PERCENTILES)
    return {
        "percentile_00_5": _round(low),
        "median": _round(median),
        "percentile_99_5": _round(high),
        "mean": _round(values.mean(dtype=np.float64)),
        "std": _round(values.std(dtype=np.float64)),
        "min": _round(values.min()),
        "max": _round(values.max()),
    }


def _body(channel: np.ndarray) -> np.ndarray:
    """The voxels not holding the background fill value (the minimum, when it fills ``FILL_FRACTION``
    of the image: 0 around an MR head, -1024 around a CT body, a z-scored 0 in BraTS), else all."""
    low = channel.min()
    background = channel == low
    return channel[~background] if background.mean() >= FILL_FRACTION else channel.ravel()


def _check_declared(values: list[int], declared: dict[int, str] | None, path: str, source: str) -> None:
    undeclared = [v for v in values if declared is not None and v not in declared]
    if undeclared:
        shown = ", ".join(str(v) for v in declared or {})
        raise BadInputError(
            f"{path}: label value(s) {undeclared} not declared in {source} 'labels' (declared: {shown})"
        )


def analyse_case(
    item: dict, index: int, samples: int, seed: int, declared: dict[int, str] | None, source: str
) -> tuple[dict[str, Any], list[np.ndarray], dict[int, list[int]]]:
    """One case's fingerprint, its sample of foreground intensities per channel, and its object sizes
    per class. The sample (the same voxels in every channel) is drawn with
    ``numpy.random.default_rng([seed, index])``."""
    image_path, label_path = item["image"], str(item["label"])
    shown_path = _first_path(image_path)
    image, image_affine, dtype = _load(image_path)
    label, label_affine, _ = _load(label_path)
    check_image(image, shown_path, allow_constant=True)
    if label.shape[0] != 1:
        raise BadInputError(f"{label_path}: label has {label.shape[0]} channels; a label map has one")
    check_label(label, label_path)
    check_pair(image, label, shown_path, label_path, image_affine, label_affine)

    spatial_dims = image.ndim - 1
    spacing, codes, ras_axis = _geometry(image_affine, spatial_dims)
    shape = [int(n) for n in image.shape[1:]]
    crop = _crop_shape(image)
    # Integer labels as stored (no int64 copy of a CT-sized map); float maps were checked to hold integers.
    labels = label[0].astype(np.int32) if np.issubdtype(label.dtype, np.floating) else label[0]
    values, counts = np.unique(labels, return_counts=True)
    present = [int(v) for v in values]
    _check_declared(present, declared, label_path, source)

    foreground = labels > 0
    # The same voxels for every channel (drawn with replacement, as nnU-Net does: each case counts equally).
    voxels = int(foreground.sum())
    picks = np.random.default_rng([seed, index]).integers(0, voxels, samples) if voxels else np.zeros(0, int)
    channels, sampled = [], []
    for channel in image:
        data = channel.astype(np.float32, copy=False)
        inside = data[foreground]
        sampled.append(inside[picks])
        channels.append(
            {
                "foreground": _foreground_statistics(inside),
                "image": _mean_std(data),
                "body": _mean_std(_body(data)),
            }
        )
    objects: dict[int, list[int]] = {}
    per_class: dict[str, dict[str, Any]] = {}
    for value, count in zip(present, counts, strict=True):
        record: dict[str, Any] = {"fraction": _round(count / labels.size)}
        if value != 0:
            components, number = ndimage.label(labels == value)
            sizes = np.bincount(components.ravel())[1:]
            objects[value] = sorted((int(s) for s in sizes), reverse=True)
            record["objects"] = int(number)
            record["object_voxels"] = _summary(sizes)
        per_class[str(value)] = record
    case = {
        "case": _case_id(item),
        "image": image_path,
        "label": label_path,
        "dtype": dtype,
        "spatial_dims": spatial_dims,
        "channels": int(image.shape[0]),
        "shape": shape,
        "spacing": spacing,
        "orientation": "".join(codes),
        "ras_axes": ras_axis,
        "shape_after_crop": crop,
        "relative_size_after_crop": _round(math.prod(crop) / math.prod(shape)),
        "voxel_volume": _round(math.prod(spacing)),
        "intensity": channels,
        "label_values": present,
        "classes": per_class,
    }
    return case, sampled, objects


# --- the dataset ----------------------------------------------------------------------------------


def _run_cases(
    items: list[dict],
    samples: int,
    seed: int,
    declared: dict[int, str] | None,
    source: str,
    workers: int,
    progress: bool,
) -> list[tuple[dict[str, Any], list[np.ndarray], dict[int, list[int]]]]:
    """``analyse_case`` over every item, in item order; the first failing case (in that order) raises."""
    arguments = [(item, index, samples, seed, declared, source) for index, item in enumerate(items)]
    bar = tqdm(total=len(items), desc="fingerprint", unit="case", file=sys.stderr, disable=not progress)
    with bar:
        if workers <= 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                results = []
                for args in arguments:
                    results.append(analyse_case(*args))
                    bar.update()
            finally:
                torch.set_num_threads(threads)
            return results
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
            futures: list[Future] = [pool.submit(analyse_case, *args) for args in arguments]
            results = []
            try:
                for future in futures:
                    results.append(future.result())
                    bar.update()
            except BadInputError as error:
                pool.shutdown(wait=True, cancel_futures=True)
                # Without the worker's traceback as its cause: the one line is the whole story.
                raise BadInputError(str(error)) from None
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            return results


def _check_consistent(cases: list[dict[str, Any]], channel_names: list[str] | None, source: str) -> None:
    """Every case has the declared (else the first case's) channel count and spatial dimensions."""
    first = cases[0]
    first_path = _first_path(first["image"])
    for case in cases:
        path = _first_path(case["image"])
        if channel_names is not None and case["channels"] != len(channel_names):
            raise BadInputError(
                f"{path}: {case['channels']} channel(s), but {source} declares {len(channel_names)} "
                f"({', '.join(channel_names)}); every case needs the same channels"
            )
        if case["channels"] != first["channels"]:
            raise BadInputError(
                f"{path}: {case['channels']} channel(s), but {first_path} has {first['channels']}; "
                "every case needs the same channels"
            )
        if case["spatial_dims"] != first["spatial_dims"]:
            raise BadInputError(
                f"{path}: {case['spatial_dims']}D image, but {first_path} is {first['spatial_dims']}D; "
                "every case needs the same dimensions"
            )


def _looks_normalised(cases: list[dict[str, Any]], channel: int) -> bool:
    """Mean ~0 and std ~1 over the image or its body in most cases."""

    def normalised(stats: dict[str, float] | None) -> bool:
        return (
            stats is not None
            and abs(stats["mean"]) <= NORMALISED_MEAN
            and NORMALISED_STD[0] <= stats["std"] <= NORMALISED_STD[1]
        )

    hits = sum(
        normalised(c["intensity"][channel]["image"]) or normalised(c["intensity"][channel]["body"])
        for c in cases
    )
    return hits >= NORMALISED_CASE_FRACTION * len(cases)


def _intensity_summary(
    cases: list[dict[str, Any]], samples: list[list[np.ndarray]], channel_names: list[str] | None
) -> list[dict[str, Any]]:
    """Per channel: percentiles, mean and std of the pooled foreground sample; min / max over all cases."""
    summary = []
    for channel in range(cases[0]["channels"]):
        pooled = np.concatenate([s[channel] for s in samples]).astype(np.float64)
        stats = [
            c["intensity"][channel]["foreground"] for c in cases if c["intensity"][channel]["foreground"]
        ]
        record: dict[str, Any] = {"channel": channel}
        record["name"] = channel_names[channel] if channel_names else None
        if pooled.size:
            record["foreground"] = _foreground_statistics(pooled)
            record["foreground"]["min"] = _round(min(s["min"] for s in stats))
            record["foreground"]["max"] = _round(max(s["max"] for s in stats))
        else:
            record["foreground"] = None
        record["looks_normalised"] = _looks_normalised(cases, channel)
        summary.append(record)
    return summary


def _class_summary(
    cases: list[dict[str, Any]], objects: list[dict[int, list[int]]], declared: dict[int, str] | None
) -> dict[str, dict[str, Any]]:
    """Per label value: name, share of all voxels, mean per-case fraction, cases present, objects per case
    (among the cases holding the class) and object sizes."""
    found = sorted({v for c in cases for v in c["label_values"]})
    values = sorted(set(found) | set(declared or {}))
    total = sum(math.prod(c["shape"]) for c in cases)
    summary: dict[str, dict[str, Any]] = {}
    for value in values:
        key = str(value)
        fractions = [c["classes"].get(key, {}).get("fraction", 0.0) for c in cases]
        voxels = sum(f * math.prod(c["shape"]) for f, c in zip(fractions, cases, strict=True))
        record: dict[str, Any] = {
            "name": (declared or {}).get(value),
            "voxel_fraction": _round(voxels / total),
            "mean_case_fraction": _round(float(np.mean(fractions))),
            "cases_present": sum(key in c["classes"] for c in cases),
        }
        if value != 0:
            counts = [len(o[value]) for o in objects if value in o] or [0]
            sizes = [s for o in objects for s in o.get(value, [])]
            volumes = [
                s * c["voxel_volume"] for o, c in zip(objects, cases, strict=True) for s in o.get(value, [])
            ]
            record["objects_per_case"] = _summary(counts)
            record["object_voxels"] = _summary(sizes) if sizes else None
            record["object_volume"] = _summary(volumes) if volumes else None
        summary[key] = record
    return summary


def _geometry_summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Spacing, shape and crop shape (RAS axis order for 3D), anisotropy, orientations."""

    def per_axis(key: str) -> dict[str, list[float]]:
        return _axis_summary([_to_ras(c[key], c["ras_axes"]) for c in cases])

    spacing = per_axis("spacing")
    median = spacing["median"]
    anisotropy = max(median) / min(median)
    per_case = [max(c["spacing"]) / min(c["spacing"]) for c in cases]
    return {
        "axes": "RAS (as the pipeline reorients)" if cases[0]["ras_axes"] is not None else "as stored",
        "spacing": spacing,
        "shape": per_axis("shape"),
        "shape_after_crop": per_axis("shape_after_crop"),
        "median_relative_size_after_crop": _round(np.median([c["relative_size_after_crop"] for c in cases])),
        "anisotropy": _round(anisotropy),
        "max_case_anisotropy": _round(max(per_case)),
        "thick_axis": int(np.argmax(median)) if anisotropy >= ANISOTROPY_THRESHOLD else None,
        "orientations": sorted({c["orientation"] for c in cases}),
    }


def fingerprint_dataset(
    data_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    max_cases: int | None = None,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """The fingerprint of an MSD folder (``data_dir``) or of ``images_dir`` + ``labels_dir``.

    Args:
        workers: processes reading cases (default ``default_workers()``); the result does not depend on it.
        progress: a progress bar on stderr.
        max_cases: only the first ``max_cases`` cases (in dataset.json or file-name order).
        seed: seed of the foreground intensity sample.

    Raises:
        BadInputError: one line naming the file and the problem.
    """
    declared: dict[int, str] | None = None
    channel_names: list[str] | None = None
    if data_dir is not None:
        items, declared, channel_names, source = msd_cases(data_dir)
    elif images_dir is not None and labels_dir is not None:
        items, source = folder_cases(images_dir, labels_dir)
    else:
        raise BadInputError("give an MSD folder (data_dir) or a folder of images and one of labels")
    items = items[:max_cases] if max_cases else items
    samples = min(MAX_SAMPLES_PER_CASE, max(MIN_SAMPLES_PER_CASE, TOTAL_SAMPLES // len(items)))
    results = _run_cases(items, samples, seed, declared, source, workers or default_workers(), progress)
    cases = [r[0] for r in results]
    _check_consistent(cases, channel_names, source)
    if all(c["label_values"] == [0] for c in cases):
        raise BadInputError(f"{source}: empty label set: no label file holds a foreground voxel")
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "source": source,
        "num_cases": len(cases),
        "spatial_dims": cases[0]["spatial_dims"],
        "channels": cases[0]["channels"],
        "channel_names": channel_names,
        "declared_labels": None if declared is None else {str(k): v for k, v in declared.items()},
        "label_values": sorted({v for c in cases for v in c["label_values"]}),
        "dtypes": sorted({c["dtype"] for c in cases}),
        "geometry": _geometry_summary(cases),
        "intensity": _intensity_summary(cases, [r[1] for r in results], channel_names),
        "classes": _class_summary(cases, [r[2] for r in results], declared),
        "samples_per_case": samples,
        "seed": seed,
        "cases": cases,
    }


def save_fingerprint(fingerprint: dict[str, Any], path: str | Path) -> Path:
    """Write ``fingerprint`` as indented JSON (atomically); returns the path."""
    return write_json(path, fingerprint)


def load_fingerprint(path: str | Path) -> dict[str, Any]:
    """Read a ``fingerprint.json``; a missing, invalid or foreign file is one ``BadInputError``."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path}: not a fingerprint (invalid JSON: {error_line(error)})") from None
    if not isinstance(content, dict) or content.get("fingerprint_version") != FINGERPRINT_VERSION:
        raise BadInputError(f"{path}: not a fingerprint.json of version {FINGERPRINT_VERSION}")
    return content


def summary_lines(fingerprint: dict[str, Any]) -> list[str]:
    """A short human summary."""
    geometry = fingerprint["geometry"]
    lines = [
        f"{fingerprint['num_cases']} cases, {fingerprint['spatial_dims']}D, "
        f"{fingerprint['channels']} channel(s) {fingerprint['channel_names'] or ''}".rstrip(),
        f"spacing median {geometry['spacing']['median']} (min {geometry['spacing']['min']}, "
        f"max {geometry['spacing']['max']}), axes {geometry['axes']}",
        f"shape median {geometry['shape']['median']} (min {geometry['shape']['min']}, "
        f"max {geometry['shape']['max']})",
        f"anisotropy {geometry['anisotropy']}"
        + (f", thick axis {geometry['thick_axis']}" if geometry["thick_axis"] is not None else ""),
    ]
    for channel in fingerprint["intensity"]:
        stats = channel["foreground"] or {}
        lines.append(
            f"channel {channel['channel']} ({channel['name'] or '-'}): foreground 0.5/50/99.5 % "
            f"{stats.get('percentile_00_5')} / {stats.get('median')} / {stats.get('percentile_99_5')}, "
            f"mean {stats.get('mean')}, std {stats.get('std')}"
            + (", looks normalised" if channel["looks_normalised"] else "")
        )
    for value, record in fingerprint["classes"].items():
        lines.append(
            f"label {value} ({record['name'] or '-'}): {record['voxel_fraction']:.4g} of voxels, "
            f"in {record['cases_present']} case(s)"
            + (
                f", {record['objects_per_case']['median']:g} object(s) per case"
                if "objects_per_case" in record
                else ""
            )
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fingerprint a labelled dataset (writes fingerprint.json).")
    parser.add_argument("--data", help="MSD folder with dataset.json")
    parser.add_argument("--images", help="folder of images (with --labels; paired by file name)")
    parser.add_argument("--labels", help="folder of labels")
    parser.add_argument("--output", default="fingerprint.json", help="fingerprint file to write")
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="processes (default %(default)s)"
    )
    parser.add_argument("--max-cases", type=int, default=None, help="only the first N cases")
    args = parser.parse_args(argv)
    if args.data is None and (args.images is None or args.labels is None):
        parser.error("give --data DIR, or --images DIR and --labels DIR")
    try:
        fingerprint = fingerprint_dataset(
            args.data, args.images, args.labels, workers=args.workers, max_cases=args.max_cases
        )
        save_fingerprint(fingerprint, args.output)
    except (BadInputError, OSError) as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(fingerprint)))
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
