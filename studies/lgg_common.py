"""Shared by the LGG bench scripts: train the ``lgg_unet2d`` bundle once and record its curves."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ignite.engine import Events

from unet_monai.bundle import load_workflow, run_workflow

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "lgg_unet2d"
DATA = REPO_ROOT.parent / "shared" / "data" / "lgg-kaggle3m-subset" / "kaggle_3m"
CURVE_KEYS = ("train_epoch_loss", "train_dice", "val_loss", "val_dice")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (one line per row, cells already formatted)."""
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows]
    return "\n".join(lines) + "\n"


def train(overrides: dict, work_dir: Path) -> dict:
    """Train the bundle with ``overrides`` into ``work_dir``; per-epoch curves, final and best metrics.

    Validation runs every ``val_interval`` epochs (set it to 1 for full curves) on the held-out patient(s).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    workflow = load_workflow(BUNDLE, "train", bundle_root=str(work_dir), **overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    curves: dict[str, list] = {"epoch": [], **{key: [] for key in CURVE_KEYS}}

    @trainer.on(Events.EPOCH_COMPLETED)
    def record(engine) -> None:  # runs after the bundle's ValidationHandler (attached first)
        metrics = {**engine.state.metrics, **evaluator.state.metrics}
        curves["epoch"].append(engine.state.epoch)
        for key in CURVE_KEYS:
            curves[key].append(float(metrics[key]) if key in metrics else None)

    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    final = {key: curves[key][-1] for key in CURVE_KEYS}
    return {
        "held_out": workflow.parser.get_parsed_content("held_out"),
        "train_slices": len(workflow.parser.get_parsed_content("split")[0]),
        "train_seconds": round(seconds, 1),
        "final": final,
        "best_val_dice": float(evaluator.state.best_metric),
        "best_epoch": int(evaluator.state.best_metric_epoch),
        "curves": curves,
    }


def evaluate(overrides: dict, work_dir: Path, checkpoint: str = "model.pt", tag: str = "") -> dict:
    """Evaluate a trained checkpoint of ``work_dir`` on its held-out patient(s) with ``evaluate.json``.

    Metrics and masks go to ``work_dir/eval_<checkpoint stem><tag>``.
    """
    start = time.perf_counter()
    workflow = run_workflow(
        BUNDLE,
        "evaluate",
        bundle_root=str(work_dir),
        ckpt_path=str(work_dir / "models" / checkpoint),
        output_dir=str(work_dir / f"eval_{Path(checkpoint).stem}{tag}"),
        **overrides,
    )
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    result = {key: round(float(value), 4) for key, value in metrics.items()}
    # patient_dice.csv: the written masks, after the 3D largest-component step when the recipe has it.
    with (work_dir / f"eval_{Path(checkpoint).stem}{tag}" / "patient_dice.csv").open() as handle:
        rows = {row["patient"]: float(row["dice"]) for row in csv.DictReader(handle)}
    result["patient_dice_written"] = rows["mean"]
    return result | {"seconds": round(time.perf_counter() - start, 1)}
