"""Quality against training time for the 3D hippocampus bundle: train, evaluate, print JSON.

Each run trains ``bundles/hippocampus_unet3d`` (one 3D U-Net on patches) with any config
overrides, times it, then evaluates the best checkpoint on the held-out validation cases with the
bundle's ``evaluate.json`` (whole volumes through the SlidingWindowInferer with mirror TTA, the
inference-time settings).

    python studies/quality_hippocampus3d.py                       # the bundle's default
    python studies/quality_hippocampus3d.py --epochs 10 20 --output studies/results/quality3d.json
    python studies/quality_hippocampus3d.py --set depth=4 --set 'roi_size=[48,64,48]' --keep runs_3d
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # machine.py: shared with bench/
from machine import machine_info  # noqa: E402

from unet_monai.bundle import parse_override, run_workflow  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet3d"
DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus"


def train_and_evaluate(epochs: int | None, overrides: dict, data_dir: Path, work_dir: Path) -> dict:
    """One run: train into ``work_dir`` (``epochs`` epochs, or the bundle's default when None),
    evaluate the best checkpoint; metrics as a dict."""
    common = {"dataset_dir": str(data_dir), "bundle_root": str(work_dir), **overrides}
    if epochs is not None:
        common["max_epochs"] = epochs
    start = time.perf_counter()
    training = run_workflow(BUNDLE, "train", **common)
    train_seconds = time.perf_counter() - start
    trainer = training.parser.get_parsed_content("train#trainer")
    validator = training.parser.get_parsed_content("validate#evaluator")
    start = time.perf_counter()
    evaluation = run_workflow(BUNDLE, "evaluate", **common)
    evaluate_seconds = time.perf_counter() - start
    metrics = evaluation.parser.get_parsed_content("validate#evaluator").state.metrics
    class_names = evaluation.parser.get_parsed_content("class_names")
    summary_file = Path(evaluation.parser.get_parsed_content("output_dir")) / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return {
        "epochs": trainer.state.max_epochs,
        "overrides": overrides,
        "train_seconds": round(train_seconds, 1),
        "evaluate_seconds": round(evaluate_seconds, 1),
        "best_val_mean_dice_no_tta": float(validator.state.best_metric),
        "best_epoch": int(validator.state.best_metric_epoch),
        "val_dice": {name: float(metrics[f"val_dice_{name}"]) for name in class_names}
        | {"mean": float(metrics["val_mean_dice"])},
        "val_mean_iou": float(metrics["val_mean_iou"]),
        "summary_mean": summary.get("mean"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, nargs="+", default=[None], help="one run per value (default: the bundle's)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="bundle config override"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="MSD hippocampus folder")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--keep",
        type=Path,
        help="train in KEEP/epochs_N (KEEP/default) and keep it (checkpoint, logs, masks)",
    )
    args = parser.parse_args()
    overrides = dict(parse_override(text) for text in args.set)
    runs = []
    for epochs in args.epochs:
        if args.keep is not None:
            work_dir = args.keep / ("default" if epochs is None else f"epochs_{epochs}")
            work_dir.mkdir(parents=True, exist_ok=True)
            runs.append(train_and_evaluate(epochs, overrides, args.data, work_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="quality3d_") as temp_dir:
                runs.append(train_and_evaluate(epochs, overrides, args.data, Path(temp_dir)))
        print(json.dumps(runs[-1]), flush=True)
    result = {"bench": "quality_hippocampus3d", "machine": machine_info(), "runs": runs}
    print(json.dumps(result, indent=2))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
    print(f"{'epochs':>6} {'train s':>8} " + " ".join(f"{k:>10}" for k in runs[0]["val_dice"]))
    for run in runs:
        print(
            f"{run['epochs']:>6} {run['train_seconds']:>8} "
            + " ".join(f"{v:>10.4f}" for v in run["val_dice"].values())
        )


if __name__ == "__main__":
    main()
