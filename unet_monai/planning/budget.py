"""Fit training into a time budget: measure what training costs on this machine, then choose the epochs.

``probe_training`` runs the bundle's own train.json (its trainer, chains, network, loss, optimiser,
inferer, handlers: everything a real run does) on a few of its cases for a few epochs, and times:

- **caching**: building the ``CacheDataset`` of those cases, per case;
- **a training step**: the median time between iterations after the first ``warmup`` ones (oneDNN's
  bfloat16 kernels take two or three steps to settle; the median ignores a step another process slowed);
- **validation**: the validator's run at the end, per case.

A first version timed the network alone on random tensors (0.556 s per step on the hippocampus plan);
the real trainer's probe measures 0.612 s, and the 31 epochs it planned took 27 min 37 s for a
30-minute budget (26.4 predicted): data, handlers and the trainer's own work count.

``fit_epochs`` then picks the number of epochs (and a validation interval giving about ten
validations) so that caching + epochs x (steps + validation share) fits the budget, keeping a margin.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

BUDGET_MARGIN = 0.9  # plan for this share of the budget: the rest absorbs what the model misses
TARGET_VALIDATIONS = 10
MIN_EPOCHS = 1
PROBE_BATCHES = 4  # iterations per probe epoch (fewer when the training cases are fewer)
PROBE_WARMUP = 3  # iterations not timed
PROBE_STEPS = 6  # iterations timed (at least)
PROBE_VALIDATION_CASES = 4


def probe_training(bundle: str | Path, plan: dict[str, Any], num_train: int) -> dict[str, float]:
    """Measured seconds of the bundle's real training on a subset of its ``num_train`` training cases:
    caching per case, a training step (median of ``PROBE_STEPS`` after ``PROBE_WARMUP``), validation per
    case. Checkpoints and logs go to a temporary folder."""
    from ignite.engine import Events

    from unet_monai.bundle import load_workflow

    train_cases = min(num_train, plan["batch_size"] * PROBE_BATCHES)
    per_epoch = math.ceil(train_cases / plan["batch_size"])
    epochs = math.ceil((PROBE_WARMUP + PROBE_STEPS + 1) / per_epoch)
    with tempfile.TemporaryDirectory(prefix="unet-monai-probe-") as scratch:
        overrides = {
            "train#dataset#data": f"$@split[0][:{train_cases}]",
            "validate#dataset#data": f"$@split[1][:{PROBE_VALIDATION_CASES}]",
            "max_epochs": epochs,
            "val_interval": epochs,
            "time_limit_minutes": None,
            "ckpt_dir": str(Path(scratch) / "models"),
            "output_dir": str(Path(scratch) / "runs"),
        }
        workflow = load_workflow(bundle, "train", **overrides)
        workflow.initialize()  # (re)parses the configs: the objects timed below are those the run uses
        parser = workflow.parser
        started = time.perf_counter()
        train_items = len(parser.get_parsed_content("train#dataset"))
        validation_items = len(parser.get_parsed_content("validate#dataset"))
        cache_seconds = (time.perf_counter() - started) / (train_items + validation_items)
        trainer = parser.get_parsed_content("train#trainer")
        validator = parser.get_parsed_content("validate#evaluator")
        ticks: list[float] = []
        starts: list[float] = []
        durations: list[float] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: ticks.append(time.perf_counter()))
        validator.add_event_handler(Events.STARTED, lambda _: starts.append(time.perf_counter()))
        validator.add_event_handler(
            Events.COMPLETED, lambda _: durations.append(time.perf_counter() - starts[-1])
        )
        workflow.run()
        workflow.finalize()
    steps = [later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False)][PROBE_WARMUP:]
    return {
        "cache_seconds_per_case": round(cache_seconds, 4),
        "step_seconds": round(statistics.median(steps), 4),
        "validation_seconds_per_case": round(statistics.median(durations) / max(1, validation_items), 4),
        "probe_iterations": len(ticks),
    }


def fit_epochs(
    costs: dict[str, float], num_train: int, num_val: int, batch_size: int, budget_minutes: float
) -> dict[str, Any]:
    """Epochs, validation interval and the predicted time for ``budget_minutes``.

    Raises:
        ValueError: the budget does not cover caching and one epoch with one validation (says how
            many minutes would).
    """
    iterations = max(1, math.ceil(num_train / batch_size))
    epoch = iterations * costs["step_seconds"]
    validation = num_val * costs["validation_seconds_per_case"]
    caching = (num_train + num_val) * costs["cache_seconds_per_case"]
    available = budget_minutes * 60 * BUDGET_MARGIN - caching
    minimum = caching + epoch + validation
    if available < epoch + validation:
        needed = math.ceil(minimum / 60 / BUDGET_MARGIN)
        raise ValueError(
            f"a budget of {budget_minutes} minutes does not cover caching and one epoch on this device: "
            f"give at least {needed} minute{'s' if needed > 1 else ''}"
        )
    epochs = max(MIN_EPOCHS, int(available // (epoch + validation / TARGET_VALIDATIONS)))
    val_interval = max(1, epochs // TARGET_VALIDATIONS)
    while epochs > MIN_EPOCHS and epochs * epoch + (epochs // val_interval + 1) * validation > available:
        epochs -= 1
    predicted = caching + epochs * epoch + (epochs // val_interval + 1) * validation
    return {
        "budget_minutes": budget_minutes,
        "max_epochs": epochs,
        "val_interval": val_interval,
        "iterations_per_epoch": iterations,
        "predicted_minutes": round(predicted / 60, 2),
        **costs,
    }
