"""Compare a folder of predicted label maps with a folder of reference label maps.

Writes ``metrics.csv`` (one row per case) and ``summary.json`` (per-class mean/std, overall means and the
per-case values), in the spirit of nnU-Net v2's ``evaluate_predictions.py``. The metrics are those of
``unet_monai.metrics.METRICS``.
"""

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from monai.data import MetaTensor
from monai.transforms import LoadImage

from unet_monai.data.datalists import NIFTI_SUFFIXES, case_name
from unet_monai.metrics import METRICS, case_metrics

# Accepted prediction names for a case: "<case>", "<case>_seg" (MONAI SaveImage's default) or "<case>_pred".
PREDICTION_POSTFIXES = ("", "_seg", "_pred")


def _find_prediction(pred_dir: Path, case: str) -> Path | None:
    """The prediction file of ``case`` in ``pred_dir``, None if there is none; error if several match."""
    candidates = [
        pred_dir / f"{case}{postfix}{suffix}" for postfix in PREDICTION_POSTFIXES for suffix in NIFTI_SUFFIXES
    ]
    found = [path for path in candidates if path.is_file()]
    if len(found) > 1:
        raise ValueError(f"Several predictions for case {case!r}: {[str(p) for p in found]}; keep only one.")
    return found[0] if found else None


def _match_cases(pred_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
    """``(case, prediction file, reference file)`` for every reference label map, sorted by case."""
    references = sorted(p for p in label_dir.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not references:
        raise ValueError(f"No reference label maps (*.nii.gz / *.nii) in {label_dir}.")
    pairs = []
    missing = []
    for reference in references:
        case = case_name(reference)
        prediction = _find_prediction(pred_dir, case)
        if prediction is None:
            missing.append(case)
        else:
            pairs.append((case, prediction, reference))
    if missing:
        raise FileNotFoundError(
            f"No prediction in {pred_dir} for {len(missing)} case(s): {', '.join(missing)} "
            "(looked for <case>.nii.gz, <case>_seg.nii.gz and <case>_pred.nii.gz)."
        )
    return pairs


def _load(path: Path) -> MetaTensor:
    """Load a NIfTI label map with MONAI (nibabel reader); ``.affine`` holds its affine."""
    return LoadImage(image_only=True, reader="NibabelReader")(str(path))


def _check_geometry(prediction: MetaTensor, reference: MetaTensor, pred_path: Path, ref_path: Path) -> None:
    """Raise ValueError unless prediction and reference have the same shape and affine (atol 1e-3)."""
    if prediction.shape != reference.shape:
        raise ValueError(
            f"Shape mismatch: prediction {pred_path} has shape {tuple(prediction.shape)}, "
            f"reference {ref_path} has shape {tuple(reference.shape)}."
        )
    pred_affine = prediction.affine.numpy()
    ref_affine = reference.affine.numpy()
    if not np.allclose(pred_affine, ref_affine, atol=1e-3):
        raise ValueError(
            f"Affine mismatch: prediction {pred_path} has affine\n{pred_affine}\n"
            f"reference {ref_path} has affine\n{ref_affine}"
        )


def _nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values; NaN (without a warning) when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _nanstd(values: list[float]) -> float:
    """Population standard deviation of the non-NaN values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.std(kept)) if kept else math.nan


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
    """Write ``text`` to a temp file in the same folder, then rename it over ``path``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _max_label(pairs: list[tuple[str, Path, Path]]) -> int:
    """Largest label value over all predictions and references."""
    largest = 0
    for _case, prediction, reference in pairs:
        for path in (prediction, reference):
            largest = max(largest, int(_load(path).max().item()))
    return largest


def evaluate_folders(
    pred_dir: str | Path,
    label_dir: str | Path,
    output_dir: str | Path,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
) -> dict:
    """Evaluate every reference label map of ``label_dir`` against its prediction in ``pred_dir``.

    A prediction for case ``<case>`` (reference ``<case>.nii.gz``) is ``<case>.nii.gz``,
    ``<case>_seg.nii.gz`` or ``<case>_pred.nii.gz`` (``.nii`` also accepted); extra predictions are ignored.
    ``num_classes`` (background included) defaults to ``len(class_names) + 1`` when names are given, else to
    the largest label value found in the references and predictions + 1. ``class_names`` name the
    foreground classes 1..C-1 (default ``class_1``, ...).

    Writes ``output_dir/metrics.csv`` and ``output_dir/summary.json`` (NaN written as null) and returns the
    summary dict (NaN kept as float NaN). Per-class means/stds skip NaN cases (class empty in the reference).
    """
    pred_dir = Path(pred_dir)
    label_dir = Path(label_dir)
    output_dir = Path(output_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"Prediction folder not found: {pred_dir}")
    if not label_dir.is_dir():
        raise FileNotFoundError(f"Reference label folder not found: {label_dir}")

    pairs = _match_cases(pred_dir, label_dir)
    if num_classes is None:
        num_classes = len(class_names) + 1 if class_names is not None else _max_label(pairs) + 1
    if num_classes < 2:
        raise ValueError(f"Need at least one foreground class, got num_classes={num_classes}.")
    if class_names is None:
        class_names = [f"class_{i}" for i in range(1, num_classes)]
    if len(class_names) != num_classes - 1:
        raise ValueError(
            f"Got {len(class_names)} class names for {num_classes - 1} foreground classes "
            f"(num_classes={num_classes} includes background)."
        )
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"Class names must be unique, got {class_names}.")

    rows = []
    for case, pred_path, ref_path in pairs:
        prediction = _load(pred_path)
        reference = _load(ref_path)
        _check_geometry(prediction, reference, pred_path, ref_path)
        try:
            values = case_metrics(prediction, reference, num_classes)
        except ValueError as err:
            raise ValueError(f"Case {case!r} ({pred_path} vs {ref_path}): {err}") from err
        row: dict = {"case": case}
        for i, name in enumerate(class_names):
            for metric in METRICS:
                row[f"{metric}_{name}"] = values[metric][i]
        for metric in METRICS:
            row[f"{metric}_mean"] = _nanmean(values[metric])
        rows.append(row)

    per_class = {
        name: {
            metric: {
                "mean": _nanmean([row[f"{metric}_{name}"] for row in rows]),
                "std": _nanstd([row[f"{metric}_{name}"] for row in rows]),
            }
            for metric in METRICS
        }
        for name in class_names
    }
    summary = {
        "num_cases": len(rows),
        "classes": list(class_names),
        "per_class": per_class,
        "mean": {
            metric: _nanmean([per_class[name][metric]["mean"] for name in class_names]) for metric in METRICS
        },
        "cases": rows,
    }

    output_dir.mkdir(parents=True, exist_ok=True)
    csv_text = io.StringIO()
    writer = csv.DictWriter(csv_text, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(output_dir / "metrics.csv", csv_text.getvalue())
    _write_atomic(
        output_dir / "summary.json", json.dumps(_nan_to_none(summary), indent=2, allow_nan=False) + "\n"
    )
    return summary
