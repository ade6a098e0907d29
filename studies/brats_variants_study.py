"""The U-Net variants and losses study of seed project 4, rerun on the ``brats_unet_variants`` bundle.

"U-Net based architectures for medical image segmentation" compared U-Net variants at about 8.5 M
parameters (plain, Attention, NAS, NAS-reduction, Efficient U-Net) and losses (Dice, squared Dice,
BCE, focal Tversky) for whole-tumour segmentation. This script trains, for each cross-validation fold
(patients held out, the others train):

- every variant (``--variants``) with the default loss (Dice), and
- the plain U-Net (``modular_unet``) with every other loss (``--losses``),

all at the same parameter budget (``features_for_budget``). Each training is scored with its final
model (nothing is chosen on the held-out patients): IoU and Dice of whole tumour per held-out patient
(3D, all the patient's slices, on the file's grid). Training speed is the median time of a training
step (forward, loss, backward, optimiser; data loading excluded; first step dropped) and the slices per
second it gives, relative to ``modular_unet`` with the default loss timed in the same run.

Settings (``--setting``; any bundle value can still be changed with ``--set KEY=VALUE``):

- ``smoke``: 1 fold, 1 epoch, 2 variants, no extra losses, the reduced network: proves the script and
  times it.
- ``reduced`` (default, for a 2-core CPU): fold 0 only (2 held-out patients, 4 training), 0.5 M
  parameters, 144x144, 16 slices a step, 10 epochs of 8 steps (80 steps). ``--folds 0 1 2`` runs all
  3 folds (three times as long).
- ``full`` (GPU): leave-one-patient-out (6 folds), 8.5 M parameters, 144x144, the bundle's 40 slices a
  step and 20 epochs (about every brain slice of the training patients once an epoch).

Writes under ``--output``: ``study.json`` (settings, machine, every run with per-patient figures and
timings), ``study.md`` (the table) and ``study.png`` (IoU / Dice and relative step time per row),
updated after every training.

    OMP_NUM_THREADS=1 python studies/brats_variants_study.py --setting smoke \
        --output studies/results/brats_smoke
    OMP_NUM_THREADS=1 python studies/brats_variants_study.py --output studies/results/brats_variants
    python studies/brats_variants_study.py --setting full --output studies/results/brats_variants_full   # GPU
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ignite.engine import Events  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # machine.py: shared with bench/
from machine import machine_info  # noqa: E402

from unet_monai.bundle import load_workflow, parse_override  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "brats_unet_variants"
DATA = REPO_ROOT.parent / "shared" / "data" / "brats2015-subset"
REFERENCE = "modular_unet"
DEFAULT_LOSS = "dice"
VARIANTS = (
    "modular_unet",
    "modular_attention_unet",
    "modular_nas_unet",
    "modular_nas_reduction_unet",
    "modular_efficient_unet",
    "modular_unet_bn",
    "modular_residual_unet",
)
LOSSES = ("dice", "squared_dice", "bce", "dice_ce", "focal_tversky")
REDUCED = {
    "param_budget": 500_000,
    # The paper's Adam 1e-4 learns nothing in the reduced setting's 80 steps (IoU 0.000 for the
    # U-Net, 0.035 for the Attention U-Net, measured 2026-11-29); 1e-3 gives the U-Net 0.50 / 0.70.
    "learning_rate": 1e-3,
    "num_samples": 16,
    "batch_size": 1,
    "patient_draws": 2,
    "num_folds": 3,
}
SETTINGS: dict[str, dict] = {
    "smoke": {
        "folds": [0],
        "epochs": 1,
        "variants": ["modular_unet", "modular_attention_unet"],
        "losses": [],
    },
    "reduced": {"folds": [0], "epochs": 10, "variants": list(VARIANTS), "losses": list(LOSSES)},
    "full": {"folds": None, "epochs": 20, "variants": list(VARIANTS), "losses": list(LOSSES)},
}
OVERRIDES = {"smoke": REDUCED, "reduced": REDUCED, "full": {"param_budget": 8_500_000, "num_folds": None}}


def release_memory() -> None:
    """Free a finished training's cached volumes and hand the memory back to the system.

    Without ``malloc_trim`` glibc keeps freed volume-sized blocks, and the process grew by about
    220 MB a training (measured); elsewhere only the garbage collection runs.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_list(variants: Sequence[str], losses: Sequence[str]) -> list[tuple[str, str]]:
    """(network, loss) pairs: every variant with the default loss, then the plain U-Net with each loss."""
    runs = [(variant, DEFAULT_LOSS) for variant in variants]
    runs += [(REFERENCE, loss) for loss in losses if (REFERENCE, loss) not in runs]
    return list(dict.fromkeys(runs))


def train_and_score(overrides: dict, work_dir: Path) -> dict:
    """Train the bundle once; the final model's per-patient IoU / Dice and the training-step timings."""
    work_dir.mkdir(parents=True, exist_ok=True)
    setup = time.perf_counter()
    workflow = load_workflow(BUNDLE, "train", bundle_root=str(work_dir), **overrides)
    workflow.initialize()
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    steps: list[float] = []
    slices: list[int] = []
    started: list[float] = []

    @trainer.on(Events.ITERATION_STARTED)
    def tick(engine) -> None:
        slices.append(int(engine.state.batch["image"].shape[0]))  # still collated here
        started.append(time.perf_counter())

    @trainer.on(Events.ITERATION_COMPLETED)
    def tock(engine) -> None:
        steps.append(time.perf_counter() - started[-1])

    validations: list[float] = []
    evaluator.add_event_handler(Events.STARTED, lambda _: validations.append(time.perf_counter()))
    evaluator.add_event_handler(
        Events.COMPLETED, lambda _: validations.append(time.perf_counter() - validations.pop())
    )
    start = time.perf_counter()
    setup_seconds = start - setup  # parsing, network, reading and caching the volumes
    workflow.run()
    seconds = time.perf_counter() - start
    network = parser.get_parsed_content("network")
    held_out = [item["patient"] for item in parser.get_parsed_content("split")[1]]
    details = evaluator.state.metric_details
    timed = steps[1:] or steps  # the first step pays for allocations and warm-up
    step_seconds = statistics.median(timed)
    result = {
        "features": parser.get_parsed_content("features"),
        "parameters": sum(p.numel() for p in network.parameters()),
        "held_out": held_out,
        "iou": dict(zip(held_out, details["val_iou"].flatten().tolist(), strict=True)),
        "dice": dict(zip(held_out, details["val_dice"].flatten().tolist(), strict=True)),
        "train_patients": len(parser.get_parsed_content("split")[0]),
        "steps": len(steps),
        "slices_per_step": slices[-1],
        "step_seconds": round(step_seconds, 4),
        "slices_per_second": round(statistics.median(slices[1:] or slices) / step_seconds, 2),
        "final_train_loss": float(trainer.state.metrics["train_epoch_loss"]),
        "setup_seconds": round(setup_seconds, 1),
        "train_seconds": round(seconds, 1),
        "validation_seconds": round(validations[-1], 1) if validations else None,
    }
    workflow.finalize()
    return result


def _mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (std only with two values or more)."""
    if not values:
        return "n/a"
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{spread}"


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (network, loss): metrics over folds (each fold: mean of its patients) and speed."""
    rows = []
    for network, loss in dict.fromkeys((run["network"], run["loss"]) for run in runs):
        mine = [run for run in runs if run["network"] == network and run["loss"] == loss]
        reference = {
            run["fold"]: run for run in runs if run["network"] == REFERENCE and run["loss"] == DEFAULT_LOSS
        }
        relative = [
            run["step_seconds"] / reference[run["fold"]]["step_seconds"]
            for run in mine
            if run["fold"] in reference
        ]
        rows.append(
            {
                "network": network,
                "loss": loss,
                "parameters": mine[0]["parameters"],
                "features": mine[0]["features"],
                "folds": [run["fold"] for run in mine],
                "iou_per_fold": [statistics.mean(run["iou"].values()) for run in mine],
                "dice_per_fold": [statistics.mean(run["dice"].values()) for run in mine],
                "iou_per_patient": {p: v for run in mine for p, v in run["iou"].items()},
                "dice_per_patient": {p: v for run in mine for p, v in run["dice"].items()},
                "step_seconds": statistics.mean(run["step_seconds"] for run in mine),
                "slices_per_second": statistics.mean(run["slices_per_second"] for run in mine),
                "relative_step_time": statistics.mean(relative) if relative else None,
                "train_seconds": sum(run["train_seconds"] for run in mine),
            }
        )
    return rows


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (one line per row, cells already formatted)."""
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows]
    return "\n".join(lines) + "\n"


def spread_over(rows: list[dict]) -> str:
    """What mean ± std run over: folds when every row has two or more, else the held-out patients."""
    return "folds" if all(len(row["folds"]) > 1 for row in rows) else "patients"


def _values(row: dict, metric: str, over: str) -> list[float]:
    """A row's IoU or Dice per fold (mean of the fold's patients) or per held-out patient."""
    return row[f"{metric}_per_fold"] if over == "folds" else list(row[f"{metric}_per_patient"].values())


def markdown(rows: list[dict]) -> str:
    """The study's table."""
    over = spread_over(rows)
    header = [
        "network",
        "loss",
        "parameters (features)",
        "folds",
        f"IoU (mean ± std over {over})",
        f"Dice (mean ± std over {over})",
        "s / training step",
        "slices / s",
        f"step time vs {REFERENCE}",
        "training time (all folds)",
    ]
    return markdown_table(
        header,
        [
            [
                row["network"],
                row["loss"],
                f"{row['parameters']:,} ({row['features']})",
                len(row["folds"]),
                _mean_std(_values(row, "iou", over)),
                _mean_std(_values(row, "dice", over)),
                f"{row['step_seconds']:.3f}",
                f"{row['slices_per_second']:.1f}",
                "n/a" if row["relative_step_time"] is None else f"{row['relative_step_time']:.2f}x",
                f"{row['train_seconds']:.0f} s",
            ]
            for row in rows
        ],
    )


def plot(rows: list[dict], path: Path, title: str) -> None:
    """IoU and Dice (mean ± std) and relative step time, one bar per (network, loss)."""
    over = spread_over(rows)
    labels = [f"{row['network'].removeprefix('modular_')}\n{row['loss']}" for row in rows]
    positions = range(len(rows))
    figure, (quality, speed) = plt.subplots(1, 2, figsize=(max(10, 1.6 * len(rows)), 4.5))
    for offset, metric, name in ((-0.2, "iou", "IoU"), (0.2, "dice", "Dice")):
        values = [_values(row, metric, over) for row in rows]
        means = [statistics.mean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        quality.bar([p + offset for p in positions], means, 0.4, yerr=stds, capsize=3, label=name)
    quality.set_ylim(0, 1)
    quality.set_title(f"whole tumour, per patient, mean ± std over {over}")
    relative = [row["relative_step_time"] or 0.0 for row in rows]
    speed.bar(list(positions), relative, 0.6, color="tab:gray")
    speed.axhline(1.0, color="black", linewidth=0.8)
    speed.set_title(f"training step time relative to {REFERENCE}")
    for axis in (quality, speed):
        axis.set_xticks(list(positions), labels, fontsize=7)
        axis.grid(axis="y", alpha=0.3)
    quality.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="reduced")
    parser.add_argument("--folds", type=int, nargs="+", help="default: the setting's")
    parser.add_argument("--epochs", type=int, help="default: the setting's")
    parser.add_argument("--variants", nargs="+", help=f"default: the setting's ({', '.join(VARIANTS)})")
    parser.add_argument("--losses", nargs="*", help=f"default: the setting's ({', '.join(LOSSES)})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle override")
    parser.add_argument("--data", type=Path, default=DATA, help="the brats2015-subset folder")
    parser.add_argument(
        "--output", type=Path, default=Path("studies/results/brats_variants"), help="results folder"
    )
    args = parser.parse_args(argv)
    setting = SETTINGS[args.setting]
    epochs = args.epochs or setting["epochs"]
    common = {"dataset_dir": str(args.data), **OVERRIDES[args.setting]}
    common |= dict(parse_override(text) for text in args.set)
    # Validation only once, after the last epoch: the final model is what is scored.
    common |= {"train#trainer#max_epochs": epochs, "val_interval": epochs}
    folds = args.folds if args.folds is not None else setting["folds"]
    if folds is None:  # leave-one-patient-out: as many folds as patients
        from unet_monai.data.brats_layout import brats_datalist

        folds = list(range(len(brats_datalist(args.data, common.get("patients"), check=False))))
    runs = run_list(
        args.variants or setting["variants"], setting["losses"] if args.losses is None else args.losses
    )
    args.output.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": "brats_variants_study",
        "setting": args.setting,
        "machine": machine_info(),
        "common": common,
        "folds": folds,
        "runs": [],
    }
    start = time.perf_counter()
    for fold in folds:
        for network, loss in runs:
            work_dir = args.output / f"fold_{fold}" / f"{network}__{loss}"
            overrides = {**common, "fold": fold, "network_name": network, "loss_name": loss}
            record = {"network": network, "loss": loss, "fold": fold, **train_and_score(overrides, work_dir)}
            release_memory()
            result["runs"].append(record)
            result["summary"] = summarise(result["runs"])
            result["total_seconds"] = round(time.perf_counter() - start, 1)
            (args.output / "study.json").write_text(json.dumps(result, indent=2))
            (args.output / "study.md").write_text(markdown(result["summary"]))
            print(json.dumps(record), flush=True)
    title = f"BraTS whole tumour, {args.setting} setting: {len(folds)} fold(s), {epochs} epoch(s)"
    plot(result["summary"], args.output / "study.png", title)
    print(markdown(result["summary"]))
    print(f"{result['total_seconds']:.0f} s in all; written: {args.output}/study.json, study.md, study.png")


if __name__ == "__main__":
    main()
