"""Training speed of the hippocampus bundle against baselines measured in the same run.

A short run of the bundle's own ``SupervisedTrainer`` (``train.json``: CacheDataset, random slice
sampling and augmentation every iteration, the bf16 forward where the CPU has it), with validation,
logging and the learning-rate schedule detached, timed after warm-up iterations, compared with:

- floor: the same network, loss and optimiser stepping on one batch of tensors already in memory
  (forward, loss, backward, optimiser step, under the same bf16 autocast);
- naive: a plain ``torch.utils.data.Dataset`` that loads and transforms each volume every epoch
  (the bundle's training chain from the file on, no cache), the same step.

Prints a table, then JSON.

    python bench/bench_training.py --quick
    python bench/bench_training.py --cases 40 --iterations 30 --output bench/results/training.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from machine import emit_json, machine_info, rounded
from monai.data import list_data_collate

from unet_monai.bundle import load_workflow, parse_override

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus"


class NaiveDataset(torch.utils.data.Dataset):
    """Loads and transforms its item on every access: what a project without a cache does."""

    def __init__(self, items: list[dict], transform: Any) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.transform(self.items[index])


def step_function(network: torch.nn.Module, loss: Any, optimizer: torch.optim.Optimizer, bf16: bool):
    """A training step as the bundle's trainer does it: forward (bf16 autocast if enabled), loss, backward."""

    def step(image: torch.Tensor, label: torch.Tensor) -> float:
        network.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = network(image)
        value = loss(pred.float(), label)
        value.backward()
        optimizer.step()
        return float(value)

    return step


def bundle_training(
    cases: int, epochs: int, warmup: int, work: Path, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The bundle's trainer for ``epochs`` epochs on ``cases`` cases (80 % train); timed after ``warmup``."""
    torch.manual_seed(0)
    workflow = load_workflow(
        BUNDLE,
        "train",
        dataset_dir=str(DATA),
        bundle_root=str(work),
        num_cases=cases,
        **{
            "train#trainer#max_epochs": epochs,
            "train#handlers": [{"_target_": "unet_monai.handlers.PlainTensorBatches"}],
        }
        | (extra or {}),
    )
    workflow.initialize()
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    marks: list[dict[str, float]] = []
    batch_shape: list[int] = []

    def batch_started(engine: Any) -> None:
        marks.append({"start": time.perf_counter()})

    def batch_completed(engine: Any) -> None:
        marks[-1]["data"] = time.perf_counter()
        marks[-1]["slices"] = int(engine.state.batch["image"].shape[0])
        batch_shape[:] = list(engine.state.batch["image"].shape)

    def iteration_completed(engine: Any) -> None:
        marks[-1]["end"] = time.perf_counter()

    trainer.add_event_handler(Events.GET_BATCH_STARTED, batch_started)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, batch_completed)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, iteration_completed)
    workflow.run()
    workflow.finalize()
    done = [m for m in marks if "end" in m]
    if len(done) <= warmup:
        raise ValueError(f"{len(done)} iterations: need more than the {warmup} warm-up ones")
    timed = done[warmup:]
    # the data time of an iteration also covers an exhausted loader being restarted at an epoch's end
    seconds = sum(m["end"] - m["start"] for m in timed)
    data = sum(m["data"] - m["start"] for m in timed)
    slices = sum(m["slices"] for m in timed)
    return {
        "parser": parser,
        "iterations": len(timed),
        "slices": slices,
        "seconds": seconds,
        "data_seconds": data,
        "batch_shape": batch_shape,
    }


def bare_steps(step: Any, batch_shape: list[int], num_classes: int, iterations: int) -> float:
    """Seconds per step on a batch already in memory (1 warm-up step)."""
    image = torch.randn(batch_shape)
    label = torch.randint(0, num_classes, (batch_shape[0], 1, *batch_shape[2:])).float()
    step(image, label)
    start = time.perf_counter()
    for _ in range(iterations):
        step(image, label)
    return (time.perf_counter() - start) / iterations


def naive_training(parser: Any, step: Any, iterations: int) -> dict[str, float]:
    """Seconds and slices for ``iterations`` steps fed by ``NaiveDataset`` (1 warm-up iteration)."""
    items = parser.get_parsed_content("split")[0]
    dataset = NaiveDataset(items, parser.get_parsed_content("train#preprocessing"))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=parser.get_parsed_content("batch_size"),
        shuffle=True,
        num_workers=0,
        collate_fn=list_data_collate,
    )
    seconds, slices, done = 0.0, 0, -1
    while done < iterations:
        start = time.perf_counter()
        for batch in loader:
            step(batch["image"].as_tensor(), batch["label"].as_tensor())
            done += 1
            if done > 0:
                seconds += time.perf_counter() - start
                slices += int(batch["image"].shape[0])
            start = time.perf_counter()
            if done >= iterations:
                break
    return {"seconds": seconds, "slices": slices}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 cases, 3 epochs, 3 warm-up iterations")
    parser.add_argument("--smoke", action="store_true", help="seconds: 5 cases, 3 epochs (tests only)")
    parser.add_argument("--cases", type=int, default=40, help="cases (80 %% train, batch 4 volumes)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the bundle's trainer")
    parser.add_argument("--warmup", type=int, default=4, help="untimed iterations at the start")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a bundle config value (train.json), e.g. --set num_workers=0",
    )
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    extra = dict(parse_override(text) for text in args.set)
    if args.quick:
        args.cases, args.epochs, args.warmup = 15, 3, 3
    if args.smoke:
        args.cases, args.epochs, args.warmup = 5, 3, 1
    result: dict[str, Any] = {"machine": machine_info(), "settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = bundle_training(args.cases, args.epochs, args.warmup, Path(tmp), extra)
    config = bundle.pop("parser")
    bf16 = bool(config.get_parsed_content("cpu_bf16"))
    step = step_function(
        config.get_parsed_content("network"),
        config.get_parsed_content("loss"),
        config.get_parsed_content("optimizer"),
        bf16,
    )
    bare = bare_steps(
        step, bundle["batch_shape"], config.get_parsed_content("num_classes"), bundle["iterations"]
    )
    naive = naive_training(config, step, bundle["iterations"])
    bundle_step = bundle["seconds"] / bundle["iterations"]
    slices_per_step = bundle["slices"] / bundle["iterations"]
    result |= {
        "bf16_forward": bf16,
        "batch_shape": bundle["batch_shape"],
        "timed_iterations": bundle["iterations"],
        "slices_per_s": bundle["slices"] / bundle["seconds"],
        "floor_slices_per_s": slices_per_step / bare,
        "naive_slices_per_s": naive["slices"] / naive["seconds"],
        "step_over_floor": bundle_step / bare,
        "data_fraction_of_step": bundle["data_seconds"] / bundle["seconds"],
        "speedup_vs_naive": (naive["seconds"] / naive["slices"]) / (bundle["seconds"] / bundle["slices"]),
        "seconds_per_step": {
            "bundle": bundle_step,
            "bundle_data": bundle["data_seconds"] / bundle["iterations"],
            "floor": bare,
            "naive": naive["seconds"] / bundle["iterations"],
        },
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    result = rounded(result)
    for name, key in [
        ("bundle trainer slices/s", "slices_per_s"),
        ("  floor (bare step) slices/s", "floor_slices_per_s"),
        ("  naive Dataset slices/s", "naive_slices_per_s"),
        ("  step / floor (target <= 1.05)", "step_over_floor"),
        ("  data fraction of the step", "data_fraction_of_step"),
        ("  speedup vs naive", "speedup_vs_naive"),
    ]:
        print(f"{name:<45} {result[key]:>10.4g}", file=sys.stderr)
    emit_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
