"""The LGG project's learning-rate and batch-size study, rerun on the bundle: a table and a plot.

The original project compared Adam learning rates 0.1 / 0.01 / 1e-4 and batch sizes 16 / 32 / 64
for its sigmoid + Dice U-Net. This script trains the bundle's original recipe once per setting, one
factor at a time: the learning rates at batch 16, then the other batch sizes at the learning rate
with the best final validation Dice. Every run has the same split (``--fold``: one patient held out)
and epochs; validation runs after every epoch on all the held-out patient's slices.

``--quick`` (the default) resizes slices to 128x128, uses 8 base features instead of the bundle's
16 and trains 10 epochs, so that the whole study (5 trainings) finishes in about half an hour on a
2-core CPU; ``--full`` keeps 256x256 and the bundle's network. Writes, under ``--output``:
``study.json`` (settings, final and best metrics, per-epoch curves, wall times), ``study.md`` (the
table) and ``study.png`` (training / validation loss and validation Dice per epoch).

    python studies/lgg_lr_batch_study.py                      # quick
    python studies/lgg_lr_batch_study.py --epochs 20 --output studies/results/lgg_study
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from lgg_common import CURVE_KEYS, DATA, markdown_table, train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # machine.py: shared with bench/
from machine import machine_info  # noqa: E402

from unet_monai.bundle import parse_override  # noqa: E402

LEARNING_RATES = (0.1, 0.01, 1e-4)
BATCH_SIZES = (16, 32, 64)


def markdown(runs: list[dict]) -> str:
    """The study's table: final training / validation loss and Dice per setting."""
    header = (
        "learning rate | batch | iterations / epoch | final train loss | final train Dice"
        " | final val loss | final val Dice | best val Dice (epoch) | wall time"
    ).split(" | ")
    rows = [
        [
            f"{run['learning_rate']:g}",
            run["batch_size"],
            run["iterations_per_epoch"],
            *(f"{run['final'][key]:.3f}" for key in CURVE_KEYS),
            f"{run['best_val_dice']:.3f} ({run['best_epoch']})",
            f"{run['train_seconds']:.0f} s",
        ]
        for run in runs
    ]
    return markdown_table(header, rows)


def plot(runs: list[dict], path: Path) -> None:
    """Training loss, validation loss and validation Dice per epoch, one line per setting."""
    panels = (
        ("train_epoch_loss", "training loss"),
        ("val_loss", "validation loss"),
        ("val_dice", "validation Dice (patient)"),
    )
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in runs:
        label = f"lr {run['learning_rate']:g}, batch {run['batch_size']}"
        for axis, (key, _) in zip(axes, panels, strict=True):
            axis.plot(run["curves"]["epoch"], run["curves"][key], marker=".", label=label)
    for axis, (_, title) in zip(axes, panels, strict=True):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[2].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"LGG U-Net, original recipe: held-out patient {runs[0]['held_out'][0]}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", default=True, help="128x128 slices, 8 base features (default)"
    )
    size.add_argument("--full", action="store_true", help="256x256 slices as stored, the bundle's network")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per setting (default 10)")
    parser.add_argument("--fold", type=int, default=0, help="the held-out patient's fold (default 0)")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle override")
    parser.add_argument("--data", type=Path, default=DATA, help="the kaggle_3m folder")
    parser.add_argument(
        "--output", type=Path, default=Path("studies/results/lgg_study"), help="results folder"
    )
    args = parser.parse_args()
    common = {
        "dataset_dir": str(args.data),
        "fold": args.fold,
        "train#trainer#max_epochs": args.epochs,
        "val_interval": 1,
    }
    if not args.full:
        common |= {"roi_size": [128, 128], "network_def#features": 8}
    common |= dict(parse_override(text) for text in args.set)
    args.output.mkdir(parents=True, exist_ok=True)
    result = {"bench": "lgg_lr_batch_study", "machine": machine_info(), "common": common, "runs": []}
    start = time.perf_counter()

    def run(learning_rate: float, batch_size: int) -> dict:
        work_dir = args.output / f"lr{learning_rate:g}_batch{batch_size}"
        trained = train({**common, "learning_rate": learning_rate, "batch_size": batch_size}, work_dir)
        record = {"learning_rate": learning_rate, "batch_size": batch_size, **trained}
        record["iterations_per_epoch"] = -(-trained["train_slices"] // batch_size)
        result["runs"].append(record)
        result["total_seconds"] = round(time.perf_counter() - start, 1)
        (args.output / "study.json").write_text(json.dumps(result, indent=2))
        (args.output / "study.md").write_text(markdown(result["runs"]))
        print(json.dumps({k: v for k, v in record.items() if k != "curves"}), flush=True)
        return record

    first_batch = args.batch_sizes[0]
    by_lr = [run(lr, first_batch) for lr in args.learning_rates]
    best_lr = max(by_lr, key=lambda r: r["final"]["val_dice"])["learning_rate"]
    result["best_learning_rate"] = best_lr
    for batch_size in args.batch_sizes[1:]:
        run(best_lr, batch_size)
    plot(result["runs"], args.output / "study.png")
    (args.output / "study.json").write_text(json.dumps(result, indent=2))
    print(markdown(result["runs"]))
    print(f"best learning rate {best_lr:g}; written: {args.output}/study.json, study.md, study.png")


if __name__ == "__main__":
    main()
