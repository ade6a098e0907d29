"""Compare a folder of predicted label maps with a folder of reference label maps.

Writes ``metrics.csv`` (one row per case) and ``summary.json`` (per-class and overall statistics and the
per-case values), in the spirit of nnU-Net v2's ``evaluate_predictions.py``. The metrics are those of
``unet_monai.metrics.METRICS``; HD95 is in mm, from the spacing of each reference's affine. Optionally also
draws figures (``unet_monai.report``): the best, median and worst case by mean Dice, and training curves.
"""

import csv
import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import LoadImage

from unet_monai import report
from unet_monai.checks import BadInputError, check_affine, check_nifti_header, read_error
from unet_monai.data.datalists import case_name
from unet_monai.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, write_text
from unet_monai.metrics import METRICS, case_metrics

# Accepted prediction names for a case: "<case>", "<case>_seg" (MONAI SaveImage's default) or "<case>_pred".
PREDICTION_POSTFIXES = ("", "_seg", "_pred")
# Without --num-classes / --class-names / --bundle, the classes are inferred from the reference label values
# only when those are 0 .. K for a K below this; anything else (0 / 255 masks, a stray 200000) is refused.
MAX_INFERRED_CLASSES = 32


def _find_prediction(pred_dir: Path, case: str) -> Path | None:
    """The prediction file of ``case`` in ``pred_dir``, None if there is none; error if several match."""
    candidates = [
        pred_dir / f"{case}{postfix}{suffix}" for postfix in PREDICTION_POSTFIXES for suffix in IMAGE_SUFFIXES
    ]
    found = [path for path in candidates if path.is_file()]
    if len(found) > 1:
        raise ValueError(
            f"{pred_dir}: several predictions for case {case!r}: {', '.join(p.name for p in found)}; "
            "keep only one"
        )
    return found[0] if found else None


def _match_cases(
    pred_dir: Path, label_dir: Path, cases: list[str] | None = None, chill: bool = False
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """``(case, prediction file, reference file)`` for every reference label map (or only ``cases``), and
    the cases without a prediction: an error unless ``chill`` (then they are left out and listed)."""
    references = sorted(p for p in label_dir.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))
    if cases is not None:
        by_case = {case_name(p): p for p in references}
        unknown = [case for case in cases if case not in by_case]
        if unknown:
            raise FileNotFoundError(f"{label_dir}: no reference label map for: {_names(unknown)}")
        references = [by_case[case] for case in sorted(set(cases))]
    if not references:
        raise ValueError(f"{label_dir}: no reference label maps ({' / '.join(IMAGE_SUFFIXES)})")
    pairs = []
    missing = []
    for reference in references:
        case = case_name(reference)
        prediction = _find_prediction(pred_dir, case)
        if prediction is None:
            missing.append(case)
        else:
            pairs.append((case, prediction, reference))
    looked_for = (
        f"looked for <case>, <case>_seg and <case>_pred with the suffixes {' / '.join(IMAGE_SUFFIXES)}"
    )
    if missing and not (chill and pairs):
        hint = "" if chill else "; --chill scores the cases that have one"
        raise FileNotFoundError(
            f"{pred_dir}: no prediction for {len(missing)} case(s): {_names(missing)} ({looked_for}){hint}"
        )
    return pairs, missing


def _names(names: list[str], shown: int = 20) -> str:
    """Names joined by commas, the first ``shown`` of them."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _find_images(images: str | Path | Mapping[str, str | Path], cases: list[str]) -> dict[str, Path]:
    """The image of each case: ``images[case]`` for a mapping, ``<folder>/<case>.nii(.gz)`` for a folder."""
    found: dict[str, Path] = {}
    missing = []
    for case in cases:
        if isinstance(images, Mapping):
            candidates = [Path(images[case])] if case in images else []
        else:
            candidates = [Path(images) / f"{case}{suffix}" for suffix in IMAGE_SUFFIXES]
        existing = [path for path in candidates if path.is_file()]
        if existing:
            found[case] = existing[0]
        else:
            missing.append(case)
    if missing:
        where = "the given image mapping" if isinstance(images, Mapping) else str(images)
        raise FileNotFoundError(f"No image in {where} for {len(missing)} case(s): {', '.join(missing)}.")
    return found


def _spacing(reference: MetaTensor) -> list[float]:
    """Voxel size in mm along each array axis: the column norms of the affine's rotation-zoom part."""
    return [float(s) for s in affine_to_spacing(reference.affine, r=reference.ndim)]


def _load(path: Path, binary: bool = False, label: bool = True) -> MetaTensor:
    """Load an image or label map with MONAI; ``.affine`` holds its affine.

    One reader per format family, so that a PNG prediction and a TIFF reference share axes and affine:
    nibabel for NIfTI, PIL for PNG / TIFF, pydicom for DICOM. With ``binary``, every non-zero value
    becomes 1 (masks saved as 0 / 255). Unreadable files and damaged affines are one ``BadInputError``
    naming the file; so are NaN / infinite values and fractions in a ``label`` map.
    """
    name = path.name.lower()
    reader = "PydicomReader" if name.endswith(".dcm") else "PILReader"
    if name.endswith(NIFTI_SUFFIXES):
        reader = "NibabelReader"
    try:
        image = LoadImage(image_only=True, reader=reader)(str(path))
    except Exception as error:
        clear = read_error(path, error)
        if clear is None:
            raise
        raise clear from None
    check_nifti_header(str(path))
    check_affine(image.affine, str(path))
    if label:
        _label_values(image, path)  # NaN and fractions refused, also before binarising
    return (image != 0).to(image.dtype) if binary else image


def _label_values(label: MetaTensor, path: Path) -> list[int]:
    """The distinct values of a label map; NaN / infinite values and fractions (0.9999) are refused."""
    if label.is_floating_point():
        bad = int((~torch.isfinite(label)).sum())
        if bad:
            raise BadInputError(
                f"{path}: {bad} NaN / infinite value(s) in a label map; label values must be integers"
            )
        fractional = label[label != torch.round(label)]
        if fractional.numel():
            raise BadInputError(f"{path}: label values must be integers, found {float(fractional[0]):.6g}")
    return [int(v) for v in torch.unique(label.as_tensor()).tolist()]


def _check_classes(label: MetaTensor, path: Path, num_classes: int, source: str) -> None:
    """Every value of a label map is a class 0 .. num_classes - 1."""
    outside = [v for v in _label_values(label, path) if not 0 <= v < num_classes]
    if outside:
        shown = ", ".join(str(v) for v in outside[:10]) + (" ..." if len(outside) > 10 else "")
        raise BadInputError(
            f"{path}: label values [{shown}] outside the classes 0 .. {num_classes - 1} "
            f"({num_classes} classes; {source})"
        )


def bundle_class_names(bundle_dir: str | Path) -> tuple[list[str], Path]:
    """The foreground class names of a bundle and its ``configs/metadata.json``.

    From ``network_data_format.outputs.pred.channel_def``: classes 1..N of a softmax output (0 is the
    background), or the one class of a single-channel (sigmoid) output; a trailing "(remark)" is dropped.
    """
    path = Path(bundle_dir) / "configs" / "metadata.json"
    if not path.is_file():
        raise BadInputError(f"{path}: no such file (--bundle takes a bundle folder)")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
        channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        numbers = sorted(int(key) for key in channel_def)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise BadInputError(
            f"{path}: no class names (network_data_format.outputs.pred.channel_def: "
            f"{type(error).__name__}: {error})"
        ) from None
    if numbers != list(range(len(numbers))):
        raise BadInputError(f"{path}: channel_def classes must be 0 .. N without gaps, got {numbers}")
    names = [re.sub(r"\s*\(.*\)\s*$", "", str(channel_def[str(n)])).strip() for n in numbers]
    return (names if len(names) == 1 else names[1:]), path


def _infer_num_classes(pairs: list[tuple[str, Path, Path]], label_dir: Path, binary: bool) -> int:
    """The classes the reference label maps show, when they are a small contiguous set 0 .. K."""
    values: set[int] = set()
    for _case, _prediction, reference in pairs:
        values.update(_label_values(_load(reference, binary), reference))
    largest = max(values)
    if sorted(values) != list(range(largest + 1)) or not 1 <= largest < MAX_INFERRED_CLASSES:
        shown = ", ".join(str(v) for v in sorted(values)[:10]) + (" ..." if len(values) > 10 else "")
        raise BadInputError(
            f"{label_dir}: reference label values {shown} are not a small contiguous set 0 .. K: pass "
            "--num-classes, --class-names or --bundle"
        )
    return largest + 1


def _memory_needed(voxels: int, num_classes: int) -> str:
    """What the metrics of one case allocate: two int64 label maps and two float32 one-hot maps."""
    size = float(voxels * (2 * 8 + 2 * 4 * num_classes))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _grey(image: MetaTensor, reference: MetaTensor) -> MetaTensor:
    """A colour image (RGB / RGBA, channels last, one more axis than its reference) as grey levels."""
    if image.ndim == reference.ndim + 1 and image.shape[-1] in (3, 4):
        return image[..., :3].float().mean(dim=-1)
    return image


def _check_geometry(prediction: MetaTensor, reference: MetaTensor, pred_path: Path, ref_path: Path) -> None:
    """Raise ValueError unless prediction and reference have the same shape and affine (atol 1e-3)."""
    if prediction.ndim != reference.ndim:
        raise BadInputError(
            f"{pred_path}: {prediction.ndim}D label map (shape {_shape(prediction)}) against a "
            f"{reference.ndim}D reference (shape {_shape(reference)}, {ref_path}): predictions must be on "
            "the reference's grid"
        )
    if prediction.shape != reference.shape:
        raise BadInputError(
            f"{pred_path}: Shape mismatch: prediction shape {tuple(prediction.shape)}, reference {ref_path} "
            f"shape {tuple(reference.shape)}"
        )
    pred_affine = prediction.affine.numpy()
    ref_affine = reference.affine.numpy()
    if pred_affine.shape != ref_affine.shape or not np.allclose(pred_affine, ref_affine, atol=1e-3):
        difference = (
            float(np.abs(pred_affine - ref_affine).max()) if pred_affine.shape == ref_affine.shape else 0.0
        )
        raise BadInputError(
            f"{pred_path}: Affine mismatch: the prediction's affine differs from its reference's "
            f"({ref_path}) by up to {difference:.4g}: spacing, origin and orientation must match"
        )


def _shape(array: MetaTensor) -> str:
    return "x".join(str(int(n)) for n in array.shape)


def _nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values; NaN (without a warning) when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _nanstd(values: list[float]) -> float:
    """Population standard deviation of the non-NaN values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.std(kept)) if kept else math.nan


def _nanmedian(values: list[float]) -> float:
    """Median of the non-NaN values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.median(kept)) if kept else math.nan


def _stats(values: list[float]) -> dict[str, float]:
    """Mean, population std and median of the non-NaN values."""
    return {"mean": _nanmean(values), "std": _nanstd(values), "median": _nanmedian(values)}


def _nan_to_none(value: object) -> object:
    """Copy of a nested dict/list structure with float NaN replaced by None (JSON null)."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` atomically (``unet_monai.io``: temporary file, fsync, checked, mode 0644, rename); a
    full disk raises ``OutputError`` naming ``path`` and leaves no file."""
    write_text(path, text)


def _ranked_cases(rows: list[dict]) -> dict[str, str]:
    """The best, median and worst case by mean Dice (cases whose mean Dice is NaN are left out)."""
    scored = sorted((row["dice_mean"], row["case"]) for row in rows if not math.isnan(row["dice_mean"]))
    if not scored:
        return {}
    return {"best": scored[-1][1], "median": scored[(len(scored) - 1) // 2][1], "worst": scored[0][1]}


def _draw_overlays(
    ranked: dict[str, str],
    rows: list[dict],
    pairs: list[tuple[str, Path, Path]],
    image_paths: dict[str, Path],
    class_names: list[str],
    output_dir: Path,
    binary: bool,
) -> dict[str, str]:
    """``overlay_<rank>.png`` for each ranked case; returns ``{"overlay_<rank>": path}``."""
    files = {case: (prediction, reference) for case, prediction, reference in pairs}
    row_of = {row["case"]: row for row in rows}
    figures = {}
    for rank, case in ranked.items():
        pred_path, ref_path = files[case]
        reference = _load(ref_path, binary)
        image = _grey(_load(image_paths[case], label=False), reference)
        if image.shape != reference.shape:
            raise ValueError(
                f"Image {image_paths[case]} has shape {tuple(image.shape)}, its reference {ref_path} has "
                f"shape {tuple(reference.shape)}; the overlays need them on one grid."
            )
        dice_text = ", ".join(f"{name} {row_of[case][f'dice_{name}']:.3f}" for name in class_names)
        path = report.save_case_figure(
            image.numpy(),
            _load(pred_path, binary).numpy(),
            reference.numpy(),
            output_dir / f"overlay_{rank}.png",
            title=f"{rank} case by mean Dice: {case}\nDice {dice_text}",
            class_names=class_names,
            spacing=_spacing(reference),
        )
        figures[f"overlay_{rank}"] = str(path)
    return figures


def evaluate_folders(
    pred_dir: str | Path,
    label_dir: str | Path,
    output_dir: str | Path,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    cases: list[str] | None = None,
    images: str | Path | Mapping[str, str | Path] | None = None,
    log_dir: str | Path | None = None,
    binary: bool = False,
    bundle: str | Path | None = None,
    chill: bool = False,
) -> dict:
    """Evaluate the reference label maps of ``label_dir`` against their predictions in ``pred_dir``.

    A prediction for case ``<case>`` (reference ``<case>.nii.gz``) is ``<case>.nii.gz``,
    ``<case>_seg.nii.gz`` or ``<case>_pred.nii.gz``; extra predictions are ignored. Any suffix of
    ``IMAGE_SUFFIXES`` works for both (``.nii``, ``.png``, ``.tif``, ...): 2D masks are evaluated as 2D.

    Args:
        pred_dir, label_dir: folders of predicted and reference label maps (same shape and affine per case).
        output_dir: where ``metrics.csv``, ``summary.json`` and the figures go.
        num_classes: classes including background; default ``len(class_names) + 1`` when names are given,
            else the bundle's classes, else inferred from the reference label values when they are a
            small contiguous set 0 .. K (``summary["classes_source"]`` says so); otherwise an error.
            Label values outside the classes, NaN and fractions are one error naming the file.
        class_names: names of the foreground classes 1..C-1 (default the bundle's, else ``class_1``, ...).
        cases: evaluate only these cases (reference names without suffix); default every reference.
        images: a folder holding ``<case>.nii.gz`` images, or a ``{case: image path}`` mapping. When given,
            writes ``overlay_best.png``, ``overlay_median.png`` and ``overlay_worst.png``: the cases with the
            highest, median and lowest mean Dice, at their slice with the most reference foreground.
        log_dir: a training run's TensorBoard folder; when it holds event files, writes
            ``training_curves.png`` (train loss, validation Dice per class and mean).
        binary: every non-zero value of predictions and references is foreground (class 1): for
            binary masks saved as 0 / 255 (PNG, TIFF). ``num_classes`` is then 2.
        bundle: a bundle folder whose ``configs/metadata.json`` names the classes (``bundle_class_names``).
        chill: score only the cases that have a prediction (nnU-Net's ``--chill``); the others are listed in
            ``summary["cases_without_prediction"]``. Without it a missing prediction is an error.

    Returns the summary dict (NaN kept as float NaN), also written to ``summary.json`` (NaN as null):
    ``per_class[name][metric]`` and ``case_mean[metric]`` hold ``mean`` / ``std`` / ``median`` over the
    cases, skipping NaN (``case_mean`` summarises each case's mean over its classes, the ``<metric>_mean``
    CSV column); ``mean[metric]`` is the mean of the per-class means; ``cases`` holds the CSV rows;
    ``figures`` maps figure names to the PNG files written; ``overlay_cases`` names the case of each overlay.
    """
    pred_dir = Path(pred_dir)
    label_dir = Path(label_dir)
    output_dir = Path(output_dir)
    for folder, what in ((pred_dir, "predictions"), (label_dir, "reference labels")):
        if not folder.is_dir():
            problem = "not a folder" if folder.exists() else "no such folder"
            raise FileNotFoundError(f"{folder}: {problem} ({what})")

    pairs, unscored = _match_cases(pred_dir, label_dir, cases, chill)
    # Look for every image before the long metric loop, so that a missing one fails at once.
    image_paths = _find_images(images, [case for case, _, _ in pairs]) if images is not None else {}
    if binary and num_classes not in (None, 2):
        raise ValueError(
            f"binary masks have 2 classes (background and foreground), got num_classes={num_classes}."
        )
    source = "classes from --num-classes" if num_classes is not None else "classes from --class-names"
    if bundle is not None:
        names, metadata = bundle_class_names(bundle)
        source = f"classes from {metadata}: {', '.join(names)}"
        for given, count in ((num_classes, num_classes), (class_names, len(class_names or []) + 1)):
            if given is not None and count != len(names) + 1:
                option = f"--num-classes {num_classes}" if given is num_classes else "--class-names"
                raise BadInputError(
                    f"{option}: the bundle's metadata.json has {len(names) + 1} classes "
                    f"(background, {', '.join(names)}) ({metadata})"
                )
        num_classes = len(names) + 1
        class_names = class_names or names
    if num_classes is None:
        if binary:
            num_classes = 2
            source = "binary masks (every non-zero value is class 1)"
        elif class_names is not None:
            num_classes = len(class_names) + 1
        else:
            num_classes = _infer_num_classes(pairs, label_dir, binary)
            source = (
                f"classes inferred from the label values 0 .. {num_classes - 1} ({num_classes} classes) of "
                "the reference label maps; pass --num-classes, --class-names or --bundle to set them"
            )
    if num_classes < 2:
        raise ValueError(
            f"--num-classes {num_classes}: need at least one foreground class (2 with background)"
        )
    if class_names is None:
        class_names = [f"class_{i}" for i in range(1, num_classes)]
    if len(class_names) != num_classes - 1:
        raise ValueError(
            f"--class-names: got {len(class_names)} class names for {num_classes - 1} foreground classes "
            f"(num_classes={num_classes} includes background)."
        )
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"--class-names: class names must be unique, got {class_names}.")

    rows = []
    for case, pred_path, ref_path in pairs:
        prediction = _load(pred_path, binary)
        reference = _load(ref_path, binary)
        _check_geometry(prediction, reference, pred_path, ref_path)
        _check_classes(reference, ref_path, num_classes, source)
        _check_classes(prediction, pred_path, num_classes, source)
        try:
            # An explicit channel dim, so that a first spatial dim of size 1 is never taken for a channel.
            values = case_metrics(prediction[None], reference[None], num_classes, _spacing(reference))
        except ValueError as err:
            raise ValueError(f"{pred_path}: against {ref_path}: {err}") from err
        except (MemoryError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and "allocate" not in str(err):
                raise
            raise BadInputError(
                f"{pred_path}: out of memory computing the metrics (asked for about "
                f"{_memory_needed(reference.numel(), num_classes)}: {num_classes} classes x "
                f"{reference.numel()} voxels); check --num-classes, or use a machine with more memory"
            ) from None
        row: dict = {"case": case}
        for i, name in enumerate(class_names):
            for metric in METRICS:
                row[f"{metric}_{name}"] = values[metric][i]
        for metric in METRICS:
            row[f"{metric}_mean"] = _nanmean(values[metric])
        rows.append(row)

    per_class = {
        name: {metric: _stats([row[f"{metric}_{name}"] for row in rows]) for metric in METRICS}
        for name in class_names
    }
    summary = {
        "num_cases": len(rows),
        "cases_without_prediction": list(unscored),
        "classes": list(class_names),
        "classes_source": source,
        "per_class": per_class,
        "mean": {
            metric: _nanmean([per_class[name][metric]["mean"] for name in class_names]) for metric in METRICS
        },
        "case_mean": {metric: _stats([row[f"{metric}_mean"] for row in rows]) for metric in METRICS},
        "cases": rows,
    }

    output_dir.mkdir(parents=True, exist_ok=True)
    csv_text = io.StringIO()
    writer = csv.DictWriter(csv_text, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(output_dir / "metrics.csv", csv_text.getvalue())

    figures: dict[str, str] = {}
    overlay_cases: dict[str, str] = {}
    if images is not None:
        overlay_cases = _ranked_cases(rows)
        figures.update(
            _draw_overlays(overlay_cases, rows, pairs, image_paths, class_names, output_dir, binary)
        )
    if log_dir is not None:
        curves = report.save_training_curves(log_dir, output_dir / "training_curves.png")
        if curves is not None:
            figures["training_curves"] = str(curves)
    summary["figures"] = figures
    summary["overlay_cases"] = overlay_cases
    # summary.json last: once it exists, the CSV and the figures are complete.
    _write_atomic(
        output_dir / "summary.json", json.dumps(_nan_to_none(summary), indent=2, allow_nan=False) + "\n"
    )
    return summary
