"""``unet-monai fit``: plan a bundle, train it (one fold, or K folds sharing the budget), evaluate it.

With ``folds`` = 1 the bundle trains fold 0 (a fifth of the cases validates) into ``models/model.pt``
and ``evaluate.json`` scores that model on the fold's validation cases. With ``folds`` = K > 1 each of
the K folds trains into ``models/fold_<k>/model.pt`` with ``budget / K`` minutes (the budget is the
whole run's, so K folds take about as long as one fold with the whole budget), each fold is evaluated
on its own validation cases (cross-validation: every case is scored once, by the model that did not
see it), and the folds are packed into ``models/model.pt`` as one ``FoldEnsemble`` that inference
applies (``ensemble_folds`` in inference.json).
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

from unet_monai.io import write_bytes, write_text

REPORT = "fit_report.json"
COMPARED = ("3d", "2.5d")
COMPARE_MIN_BUDGET = 60.0  # minutes: below, "auto" fits the planned configuration only (each half gets >= 30)


def pack_folds(checkpoints: list[Path], output: Path) -> Path:
    """One ``model.pt`` holding fold ``k``'s weights under ``members.<k>.`` and fold 0's settings."""
    import torch

    from unet_monai.checkpoints import SETTINGS_KEY, read_settings, read_state_dict

    state = {
        f"members.{fold}.{key}": value
        for fold, path in enumerate(checkpoints)
        for key, value in read_state_dict(path).items()
    }
    packed: dict[str, Any] = {"model": state}
    settings = read_settings(checkpoints[0])
    if settings is not None:
        packed[SETTINGS_KEY] = settings
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    return write_bytes(output, buffer.getvalue())


def _mean_metrics(per_fold: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's mean over the folds (the cross-validation figure with K folds)."""
    names = per_fold[0]["metrics"]
    return {
        name: round(sum(entry["metrics"][name] for entry in per_fold) / len(per_fold), 4) for name in names
    }


def _fold_metrics(workflow: Any) -> dict[str, float]:
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    return {key: round(float(value), 4) for key, value in metrics.items() if isinstance(value, (int, float))}


def fit_configuration(
    output: str | Path,
    data_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    budget_minutes: float = 30.0,
    folds: int = 1,
    configuration: str = "auto",
    device: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    command: str = "unet-monai fit",
    fingerprint: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Plan one configuration, train and evaluate it; the report (also in ``<output>/fit_report.json``)."""
    from unet_monai.bundle import run_workflow
    from unet_monai.planning.bundle_writer import write_bundle
    from unet_monai.planning.planner import plan_bundle

    if folds < 1:
        raise ValueError(f"--folds: must be at least 1, got {folds}")
    output = Path(output)
    started = time.perf_counter()
    plan = plan_bundle(
        output,
        data_dir=data_dir,
        images_dir=images_dir,
        labels_dir=labels_dir,
        budget_minutes=budget_minutes / folds,
        configuration=configuration,
        device=device,
        workers=workers,
        progress=progress,
        command=command,
        fingerprint=fingerprint,
        overwrite=overwrite,
    )
    plan_seconds = time.perf_counter() - started
    report: dict[str, Any] = {
        "command": command,
        "configuration": plan["configuration"],
        "budget_minutes": budget_minutes,
        "folds": folds,
        "per_fold": [],
    }
    checkpoints = []
    for fold in range(folds):
        fold_dir = output / "models" if folds == 1 else output / "models" / f"fold_{fold}"
        runs = output / "runs" if folds == 1 else output / "runs" / f"fold_{fold}"
        settings = {"fold": fold, "ckpt_dir": str(fold_dir), "output_dir": str(runs)}
        if folds > 1:
            settings["num_folds"] = folds
        started = time.perf_counter()
        training = run_workflow(output, "train", **settings)
        train_seconds = time.perf_counter() - started
        evaluation_dir = output / "eval" if folds == 1 else output / "eval" / f"fold_{fold}"
        evaluation = run_workflow(output, "evaluate", **(settings | {"output_dir": str(evaluation_dir)}))
        report["per_fold"].append(
            {
                "fold": fold,
                "epochs": training.parser.get_parsed_content("train#trainer").state.epoch,
                "train_seconds": round(train_seconds, 1),
                "metrics": _fold_metrics(evaluation),
                "evaluation": str(evaluation_dir),
            }
        )
        checkpoints.append(fold_dir / "model.pt")
    if folds > 1:
        pack_folds(checkpoints, output / "models" / "model.pt")
    dice = [entry["metrics"]["val_mean_dice"] for entry in report["per_fold"]]
    # The measured figures go into the bundle itself (metadata's eval_metrics, the README), and
    # inference.json ensembles the folds.
    results = {"metrics": _mean_metrics(report["per_fold"]), "per_fold": report["per_fold"], "folds": folds}
    plan = plan | {"results": results, "ensemble_folds": folds}
    written_fingerprint = json.loads((output / "fingerprint.json").read_text(encoding="utf-8"))
    dataset_dir = data_dir if data_dir is not None else images_dir
    write_bundle(
        output,
        plan,
        written_fingerprint,
        dataset_dir,
        None if data_dir is not None else labels_dir,
        command=command,
    )
    report |= {
        "mean_val_dice": round(sum(dice) / len(dice), 4),
        "plan_seconds": round(plan_seconds, 1),
        "planned_epochs": plan.get("max_epochs"),
        "model": str(output / "models" / "model.pt"),
    }
    write_text(output / REPORT, json.dumps(report, indent=2) + "\n")
    return report


def should_compare(fingerprint: dict[str, Any], configuration: str, budget_minutes: float) -> bool:
    """Whether ``fit`` compares 3D and 2.5D: "auto", volumes that are not strongly anisotropic (2D is
    then the only plan), and a budget of at least ``COMPARE_MIN_BUDGET`` minutes (half for each)."""
    return (
        configuration == "auto"
        and fingerprint["spatial_dims"] == 3
        and fingerprint["geometry"]["thick_axis"] is None
        and budget_minutes >= COMPARE_MIN_BUDGET
    )


def fit(
    output: str | Path,
    data_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    budget_minutes: float = 30.0,
    folds: int = 1,
    configuration: str = "auto",
    device: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    command: str = "unet-monai fit",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Plan, train and evaluate in ``output``; returns the report (also ``<output>/fit_report.json``).

    With ``configuration="auto"`` on volumes and a budget of ``COMPARE_MIN_BUDGET`` minutes or more,
    3D and 2.5D are both fitted (half the budget each, under ``output/candidates/``), and the one with
    the higher mean validation Dice (cross-validation when ``folds`` > 1) becomes the bundle in
    ``output``, as nnU-Net's find_best_configuration keeps the best configuration; the report says
    both scores and why.
    """
    from unet_monai.planning.fingerprint import fingerprint_dataset

    if folds < 1:
        raise ValueError(f"--folds: must be at least 1, got {folds}")
    fingerprint = fingerprint_dataset(data_dir, images_dir, labels_dir, workers=workers, progress=progress)
    common = {
        "data_dir": data_dir,
        "images_dir": images_dir,
        "labels_dir": labels_dir,
        "folds": folds,
        "device": device,
        "workers": workers,
        "progress": progress,
        "command": command,
        "fingerprint": fingerprint,
        "overwrite": overwrite,
    }
    if not should_compare(fingerprint, configuration, budget_minutes):
        return fit_configuration(output, budget_minutes=budget_minutes, configuration=configuration, **common)
    output = Path(output)
    candidates = {
        name: fit_configuration(
            output / "candidates" / name, budget_minutes=budget_minutes / 2, configuration=name, **common
        )
        for name in COMPARED
    }
    scores = {name: report["mean_val_dice"] for name, report in candidates.items()}
    kept = max(COMPARED, key=lambda name: scores[name])
    other = next(name for name in COMPARED if name != kept)
    shutil.copytree(
        output / "candidates" / kept, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns("candidates")
    )
    report = candidates[kept] | {
        "budget_minutes": budget_minutes,
        "configuration_choice": {
            "scores": scores,
            "kept": kept,
            "why": f"{kept} reached a mean validation Dice of {scores[kept]} against {scores[other]} for "
            f"{other}, each trained with half of the {budget_minutes:g}-minute budget on the same folds",
        },
    }
    write_text(output / REPORT, json.dumps(report, indent=2) + "\n")
    return report
