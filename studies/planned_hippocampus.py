"""The planned bundle against the hand-made one on the hippocampus: plan, train to a budget, evaluate.

Plans a bundle from ``../shared/data/msd-hippocampus`` alone (``unet_monai.planning.plan_bundle``,
no edits), trains it within ``--budget`` minutes on this machine, and evaluates it with its
``evaluate.json`` (whole volumes, mirror TTA) on the validation cases the hand-made hippocampus bundles
use (``split_datalist(val_fraction=0.2, seed=0)``: the planned bundle trains on the rest, the split given
as an override, not an edit). The baseline, in the same run: ``bundles/hippocampus_unet2d``'s shipped
weights evaluated by its own ``evaluate.json`` on the same cases. Prints JSON (and writes ``--output``).

    python studies/planned_hippocampus.py --budget 30 --output studies/results/planned_hippocampus.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from unet_monai.bundle import run_workflow
from unet_monai.planning.plan import summary_lines
from unet_monai.planning.planner import plan_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
HAND_MADE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus"
SAME_SPLIT = {"split": "$unet_monai.data.split_datalist(@datalist, 0.2, 0)"}


def dice_of(workflow) -> dict[str, float]:
    """The evaluator's Dice per class and mean (``val_dice_<class>``, ``val_mean_dice``)."""
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    flat: dict[str, float] = {}
    for key, value in metrics.items():  # per-class metrics come as one value per class, or as a dict
        for name, number in value.items() if isinstance(value, dict) else [(key, value)]:
            if "dice" in name:
                flat[name] = round(float(number), 4)
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0, help="training budget in minutes")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    parser.add_argument("--keep", type=Path, help="plan the bundle here (default: a temporary folder)")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the bundle planned and trained before in --keep",
    )
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="planned_hippocampus_"))
    bundle = work / "planned_hippocampus"
    command = f"unet-monai plan --data {args.data} --output {bundle} --budget {args.budget:g}"

    plan_seconds = train_seconds = epochs_run = None
    if args.evaluate_only:  # a bundle this script planned and trained before (--keep): evaluate it again
        plan = json.loads((bundle / "plan.json").read_text())
    else:
        started = time.perf_counter()
        plan = plan_bundle(
            bundle, data_dir=args.data, budget_minutes=args.budget, progress=False, command=command
        )
        plan_seconds = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        training = run_workflow(bundle, "train", **SAME_SPLIT)
        train_seconds = round(time.perf_counter() - started, 1)
        epochs_run = training.parser.get_parsed_content("train#trainer").state.epoch
    started = time.perf_counter()
    planned = dice_of(run_workflow(bundle, "evaluate", **SAME_SPLIT))
    evaluate_seconds = time.perf_counter() - started
    hand_made_eval = {"dataset_dir": str(args.data), "output_dir": str(work / "hand_made_eval")}
    hand_made = dice_of(run_workflow(HAND_MADE, "evaluate", **hand_made_eval))
    result = {
        "study": "planned_hippocampus",
        "command": command,
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "budget_minutes": args.budget,
        "plan": summary_lines(plan),
        "planned_epochs": plan.get("max_epochs"),
        "predicted_minutes": plan.get("predicted_minutes"),
        "epochs_run": epochs_run,
        "plan_seconds": plan_seconds,
        "train_seconds": train_seconds,
        "evaluate_seconds": round(evaluate_seconds, 1),
        "planned_dice": planned,
        "hand_made_hippocampus_unet2d_dice": hand_made,
        "difference_mean_dice": round(planned["val_mean_dice"] - hand_made["val_mean_dice"], 4),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
