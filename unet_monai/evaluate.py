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
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import LoadImage

from unet_monai import report
from unet_monai.data.datalists import IMAGE_SUFFIXES, NIFTI_SUFFIXES, case_name
from unet_monai.io import write_text
from unet_monai.metrics import METRICS, case_metrics

# Accepted prediction names for a case: "<case>", "<case>_seg" (MONAI SaveImage's default) or "<case>_pred".
PREDICTION_POSTFIXES = ("", "_seg", "_pred")


def _find_prediction(pred_dir: Path, case: str) -> Path | None:
    """The prediction file of ``case`` in ``pred_dir``, None if there is none; error if several match."""
    candidates = [
        pred_dir / f"{case}{postfix}{suffix}" for postfix in PREDICTION_POSTFIXES for suffix in IMAGE_SUFFIXES
    ]
    found = [path for path in candidates if path.is_file()]
    if len(found) > 1:
        raise ValueError(f"Several predictions for case {case!r}: {[str(p) for p in found]}; keep only one.")
    return found[0] if found else None


def _match_cases(
    pred_dir: Path, label_dir: Path, cases: list[str] | None = None
) -> list[tuple[str, Path, Path]]:
    """``(case, prediction file, reference file)`` for every reference label map (or only ``cases``)."""
    references = sorted(p for p in label_dir.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))
    if cases is not None:
        by_case = {case_name(p): p for p in references}
        unknown = [case for case in cases if case not in by_case]
        if unknown:
            raise FileNotFoundError(f"No reference label map in {label_dir} for: {', '.join(unknown)}.")
        references = [by_case[case] for case in sorted(set(cases))]
    if not references:
        raise ValueError(f"No reference label maps ({' / '.join(IMAGE_SUFFIXES)}) in {label_dir}.")
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
            "(looked for <case>, <case>_seg and <case>_pred with the suffixes "
            f"{' / '.join(IMAGE_SUFFIXES)})."
        )
    return pairs


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


def _load(path: Path, binary: bool = False) -> MetaTensor:
    """Load an image or label map with MONAI; ``.affine`` holds its affine.

    One reader per format family, so that a PNG prediction and a TIFF reference share axes and affine:
    nibabel for NIfTI, PIL for PNG / TIFF, pydicom for DICOM. With ``binary``, every non-zero value
    becomes 1 (masks saved as 0 / 255).
    """
    name = path.name.lower()
    reader = "PydicomReader" if name.endswith(".dcm") else "PILReader"
    if name.endswith(NIFTI_SUFFIXES):
        reader = "NibabelReader"
    image = LoadImage(image_only=True, reader=reader)(str(path))
    return (image != 0).to(image.dtype) if binary else image


def _grey(image: MetaTensor, reference: MetaTensor) -> MetaTensor:
    """A colour image (RGB / RGBA, channels last, one more axis than its reference) as grey levels."""
    if image.ndim == reference.ndim + 1 and image.shape[-1] in (3, 4):
        return image[..., :3].float().mean(dim=-1)
    return image


def _check_geometry(prediction: MetaTensor, reference: MetaTensor, pred_path: Path, ref_path: Path) -> None:
    """Raise ValueError unless prediction and reference have the same shape and affine (atol 1e-3)."""
    if prediction.shape != reference.shape:
        raise ValueError(
            f"Shape mismatch: prediction {pred_path} has shape {tuple(prediction.shape)}, "
            f"reference {ref_path} has shape {tuple(reference.shape)}."
        )
    pred_affine = prediction.affine.numpy()
    ref_affine = reference.affine.numpy()
    if pred_affine.shape != ref_affine.shape or not np.allclose(pred_affine, ref_affine, atol=1e-3):
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


def _max_label(pairs: list[tuple[str, Path, Path]], binary: bool) -> int:
    """Largest label value over all predictions and references."""
    largest = 0
    for _case, prediction, reference in pairs:
        for path in (prediction, reference):
            largest = max(largest, int(_load(path, binary).max().item()))
    return largest


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
        image = _grey(_load(image_paths[case]), reference)
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
) -> dict:
    """Evaluate the reference label maps of ``label_dir`` against their predictions in ``pred_dir``.

    A prediction for case ``<case>`` (reference ``<case>.nii.gz``) is ``<case>.nii.gz``,
    ``<case>_seg.nii.gz`` or ``<case>_pred.nii.gz``; extra predictions are ignored. Any suffix of
    ``IMAGE_SUFFIXES`` works for both (``.nii``, ``.png``, ``.tif``, ...): 2D masks are evaluated as 2D.

    Args:
        pred_dir, label_dir: folders of predicted and reference label maps (same shape and affine per case).
        output_dir: where ``metrics.csv``, ``summary.json`` and the figures go.
        num_classes: classes including background; default ``len(class_names) + 1`` when names are given,
            else the largest label value found in the references and predictions + 1.
        class_names: names of the foreground classes 1..C-1 (default ``class_1``, ...).
        cases: evaluate only these cases (reference names without suffix); default every reference.
        images: a folder holding ``<case>.nii.gz`` images, or a ``{case: image path}`` mapping. When given,
            writes ``overlay_best.png``, ``overlay_median.png`` and ``overlay_worst.png``: the cases with the
            highest, median and lowest mean Dice, at their slice with the most reference foreground.
        log_dir: a training run's TensorBoard folder; when it holds event files, writes
            ``training_curves.png`` (train loss, validation Dice per class and mean).
        binary: every non-zero value of predictions and references is foreground (class 1): for
            binary masks saved as 0 / 255 (PNG, TIFF). ``num_classes`` is then 2.

    Returns the summary dict (NaN kept as float NaN), also written to ``summary.json`` (NaN as null):
    ``per_class[name][metric]`` and ``case_mean[metric]`` hold ``mean`` / ``std`` / ``median`` over the
    cases, skipping NaN (``case_mean`` summarises each case's mean over its classes, the ``<metric>_mean``
    CSV column); ``mean[metric]`` is the mean of the per-class means; ``cases`` holds the CSV rows;
    ``figures`` maps figure names to the PNG files written; ``overlay_cases`` names the case of each overlay.
    """
    pred_dir = Path(pred_dir)
    label_dir = Path(label_dir)
    output_dir = Path(output_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"Prediction folder not found: {pred_dir}")
    if not label_dir.is_dir():
        raise FileNotFoundError(f"Reference label folder not found: {label_dir}")

    pairs = _match_cases(pred_dir, label_dir, cases)
    # Look for every image before the long metric loop, so that a missing one fails at once.
    image_paths = _find_images(images, [case for case, _, _ in pairs]) if images is not None else {}
    if binary and num_classes not in (None, 2):
        raise ValueError(
            f"binary masks have 2 classes (background and foreground), got num_classes={num_classes}."
        )
    if num_classes is None:
        if binary:
            num_classes = 2
        elif class_names is not None:
            num_classes = len(class_names) + 1
        else:
            num_classes = _max_label(pairs, binary) + 1
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
        prediction = _load(pred_path, binary)
        reference = _load(ref_path, binary)
        _check_geometry(prediction, reference, pred_path, ref_path)
        try:
            # An explicit channel dim, so that a first spatial dim of size 1 is never taken for a channel.
            values = case_metrics(prediction[None], reference[None], num_classes, _spacing(reference))
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
        name: {metric: _stats([row[f"{metric}_{name}"] for row in rows]) for metric in METRICS}
        for name in class_names
    }
    summary = {
        "num_cases": len(rows),
        "classes": list(class_names),
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
