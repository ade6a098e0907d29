"""Patient-level leave-one-out Dice of the LGG bundle: the original recipe against ours.

For each recipe and each fold (one patient held out, the others train), the bundle trains for
``--epochs`` epochs; the final checkpoint (``models/model.pt``, no selection on the held-out patient)
is evaluated with ``evaluate.json`` on every slice of the held-out patient. The reported Dice is the
patient's Dice: all its slices pooled (2 TP / (2 TP + FP + FN)). Ours is evaluated with and without
its mirror TTA; the best validation Dice during training (checkpoint chosen on the held-out patient,
as the original project's "best validation" figure was) is given beside, for reference.

    OMP_NUM_THREADS=1 python studies/lgg_leave_one_out.py --epochs 40 --set roi_size=[128,128] \
        --set network_def#features=8 --output studies/results/lgg_loo
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from lgg_common import DATA, evaluate, markdown_table, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # machine.py: shared with bench/
from machine import machine_info  # noqa: E402

from unet_monai.bundle import parse_override  # noqa: E402
from unet_monai.data.lgg_layout import lgg_datalist, patient_ids  # noqa: E402

OURS = json.loads((Path(__file__).resolve().parents[1] / "bundles/lgg_unet2d/configs/ours.json").read_text())


def run_fold(recipe: str, fold: int, overrides: dict, work_dir: Path) -> dict:
    """Train one fold of one recipe ("original": train.json; "ours": with configs/ours.json merged),
    evaluate its final checkpoint (and ours without TTA)."""
    settings = {**(OURS if recipe == "ours" else {}), "fold": fold, **overrides}
    trained = train(settings, work_dir)
    result = {"recipe": recipe, "fold": fold, **{k: v for k, v in trained.items() if k != "curves"}}
    result["final_eval"] = evaluate(settings, work_dir)
    if recipe == "ours":
        result["final_eval_no_tta"] = evaluate({**settings, "mirror_axes": []}, work_dir, tag="_no_tta")
    return result


def markdown(runs: list[dict]) -> str:
    """Per-fold and mean patient Dice of each recipe."""
    header = (
        "recipe | fold | held-out patient | train slices | training time"
        " | patient Dice (final model) | without TTA | slice Dice (tumour slices)"
        " | after the 3D largest-component step | best val Dice during training (epoch)"
    ).split(" | ")
    rows = []
    for run in runs:
        no_tta = run.get("final_eval_no_tta", run["final_eval"])["val_dice"]
        rows.append(
            [
                run["recipe"],
                run["fold"],
                run["held_out"][0],
                run["train_slices"],
                f"{run['train_seconds']:.0f} s",
                f"{run['final_eval']['val_dice']:.3f}",
                f"{no_tta:.3f}",
                f"{run['final_eval']['val_slice_dice']:.3f}",
                f"{run['final_eval']['patient_dice_written']:.3f}",
                f"{run['best_val_dice']:.3f} ({run['best_epoch']})",
            ]
        )
    for recipe in dict.fromkeys(run["recipe"] for run in runs):
        mine = [run for run in runs if run["recipe"] == recipe]
        dice = [run["final_eval"]["val_dice"] for run in mine]
        no_tta = [run.get("final_eval_no_tta", run["final_eval"])["val_dice"] for run in mine]
        spread = f" ± {statistics.stdev(dice):.3f}" if len(dice) > 1 else ""
        rows.append(
            [
                f"**{recipe}, mean of {len(mine)}**",
                "",
                "",
                "",
                f"{sum(r['train_seconds'] for r in mine):.0f} s",
                f"**{statistics.mean(dice):.3f}**{spread}",
                f"{statistics.mean(no_tta):.3f}",
                f"{statistics.mean(r['final_eval']['val_slice_dice'] for r in mine):.3f}",
                f"{statistics.mean(r['final_eval']['patient_dice_written'] for r in mine):.3f}",
                f"{statistics.mean(r['best_val_dice'] for r in mine):.3f}",
            ]
        )
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", nargs="+", default=["original", "ours"])
    parser.add_argument("--folds", type=int, nargs="+", help="default: every patient (leave-one-out)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle override")
    parser.add_argument("--data", type=Path, default=DATA, help="the kaggle_3m folder")
    parser.add_argument("--output", type=Path, default=Path("studies/results/lgg_loo"), help="results folder")
    args = parser.parse_args()
    overrides = {"dataset_dir": str(args.data), "train#trainer#max_epochs": args.epochs, "val_interval": 1}
    overrides |= dict(parse_override(text) for text in args.set)
    folds = args.folds or list(range(len(patient_ids(lgg_datalist(args.data, check=False)))))
    args.output.mkdir(parents=True, exist_ok=True)
    result = {"bench": "lgg_leave_one_out", "machine": machine_info(), "overrides": overrides, "runs": []}
    start = time.perf_counter()
    for recipe in args.recipes:
        for fold in folds:
            run = run_fold(recipe, fold, overrides, args.output / recipe / f"fold_{fold}")
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            result["total_seconds"] = round(time.perf_counter() - start, 1)
            (args.output / "loo.json").write_text(json.dumps(result, indent=2))
            (args.output / "loo.md").write_text(markdown(result["runs"]))
    print(markdown(result["runs"]))
    print(f"written: {args.output / 'loo.json'}, {args.output / 'loo.md'}")


if __name__ == "__main__":
    main()
