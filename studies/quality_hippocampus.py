"""Quality against training time for the hippocampus bundle: train, evaluate, print JSON.

Each run trains every member of ``bundles/hippocampus_unet2d`` (one network per slice direction,
``members`` in ``train.json``) for the given number of epochs, or each for its own number by
default, with any config overrides, times it, then evaluates the members' best checkpoints
together on the held-out validation cases with the bundle's ``evaluate.json`` (whole volumes, the
inference-time settings: fusion of the slice directions and mirror TTA).

    python studies/quality_hippocampus.py                            # the bundle's default
    python studies/quality_hippocampus.py --epochs 10 25 50 --output studies/results/quality.json
    # one axial network, as in rows 1 to 10 of the bundle's study
    python studies/quality_hippocampus.py --epochs 45 \
        --set 'members=[{"slice_axis": 2, "roi_size": [48, 64], "epochs": 45}]'
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

from unet_monai.bundle import load_workflow, parse_override, run_workflow  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus"


def train_and_evaluate(epochs: int | None, overrides: dict, data_dir: Path, work_dir: Path) -> dict:
    """One run: train every ensemble member into ``work_dir`` (each for ``epochs`` epochs, or its own
    number when ``epochs`` is None), evaluate the best checkpoints together; metrics as a dict."""
    common = {"dataset_dir": str(data_dir), "bundle_root": str(work_dir), **overrides}
    if epochs is not None:
        common["train#trainer#max_epochs"] = epochs
    members = load_workflow(BUNDLE, "train", **common).parser.get("members")
    member_seconds = []
    for member in range(len(members)):
        start = time.perf_counter()
        run_workflow(BUNDLE, "train", **common, member=member)
        member_seconds.append(round(time.perf_counter() - start, 1))
    train_seconds = sum(member_seconds)
    start = time.perf_counter()
    evaluation = run_workflow(BUNDLE, "evaluate", **common)
    evaluate_seconds = time.perf_counter() - start
    metrics = evaluation.parser.get_parsed_content("validate#evaluator").state.metrics
    class_names = evaluation.parser.get_parsed_content("class_names")
    return {
        "epochs": epochs,
        "overrides": overrides,
        "members": members,
        "train_seconds": round(train_seconds, 1),
        "member_train_seconds": member_seconds,
        "evaluate_seconds": round(evaluate_seconds, 1),
        "val_dice": {name: float(metrics[f"val_dice_{name}"]) for name in class_names}
        | {"mean": float(metrics["val_mean_dice"])},
        "val_mean_iou": float(metrics["val_mean_iou"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, nargs="+", default=[None], help="one run per value (default: each member's own)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="bundle config override"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="MSD hippocampus folder")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--keep",
        type=Path,
        help="train in KEEP/epochs_N (KEEP/default) and keep it (checkpoints, TensorBoard logs, masks)",
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
            with tempfile.TemporaryDirectory(prefix="quality_") as temp_dir:
                runs.append(train_and_evaluate(epochs, overrides, args.data, Path(temp_dir)))
        print(json.dumps(runs[-1]), flush=True)
    result = {
        "bench": "quality_hippocampus",
        "machine": machine_info(),
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
    print(f"{'epochs':>6} {'train s':>8} " + " ".join(f"{k:>10}" for k in runs[0]["val_dice"]))
    for run in runs:
        print(
            f"{str(run['epochs']):>6} {run['train_seconds']:>8} "
            + " ".join(f"{v:>10.4f}" for v in run["val_dice"].values())
        )


if __name__ == "__main__":
    main()
