"""Fit training into a time budget: measure what a step costs on this device, then choose the epochs.

``measure_costs`` times, on this machine and with the plan's real parts:

- **caching**: the chain's deterministic part (load, check, orient, scale, resample) per case, which
  MONAI's ``CacheDataset`` runs once before training;
- **a training step**: the chain's random part for one batch of cached cases (patch sampling,
  augmentation) plus the bundle's own network, loss, optimiser and training inferer (bfloat16 forward on
  CPUs that have it) on a batch of the plan's shape;
- **validation**: the network's forward on one window, times the windows a case needs (validation
  cases are cached too, so their preprocessing is part of caching).

``fit_epochs`` then picks the number of epochs (and a validation interval giving about ten
validations) so that caching + epochs x (steps + validation share) fits the budget, keeping a margin.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainingParts:
    """What a training step runs, as the bundle's train.json builds it."""

    network: Any
    loss: Any
    optimizer: Any
    inferer: Any


BUDGET_MARGIN = 0.9  # plan for this share of the budget: the rest absorbs what the model misses
TARGET_VALIDATIONS = 10
MIN_EPOCHS = 1


def _split_chain(chain: Any) -> tuple[list, list]:
    """A MONAI Compose cut where ``CacheDataset`` cuts it: before the first random transform."""
    from monai.transforms import Randomizable

    transforms = list(chain.flatten().transforms)
    first_random = next((i for i, t in enumerate(transforms) if isinstance(t, Randomizable)), len(transforms))
    return transforms[:first_random], transforms[first_random:]


def _apply(transforms: Sequence[Any], data: Any) -> Any:
    from monai.transforms import apply_transform

    for transform in transforms:
        data = apply_transform(transform, data, map_items=True)
    return data


def _network_seconds(
    parts: TrainingParts, plan: dict[str, Any], steps: int, warmup: int
) -> tuple[float, float]:
    """Seconds per training step (the bundle's network, loss, optimiser and training inferer on a batch of
    the plan's shape) and per inference window: the median of ``steps`` runs after ``warmup`` (oneDNN's
    bfloat16 kernels take two or three steps to settle; the median ignores a step another process slowed).
    The network's weights are put back and the optimiser's state cleared afterwards."""
    import torch

    network, loss_function, optimizer, inferer = parts.network, parts.loss, parts.optimizer, parts.inferer
    batch = plan["batch_size"] * plan["num_samples"]
    generator = torch.Generator().manual_seed(0)
    in_channels = plan["network"]["in_channels"]
    image = torch.randn(batch, in_channels, *plan["roi_size"], generator=generator)
    label = torch.randint(0, plan["num_classes"], (batch, 1, *plan["roi_size"]), generator=generator)
    saved = {key: value.detach().clone() for key, value in network.state_dict().items()}
    network.train()
    step_times = []
    for index in range(warmup + steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(inferer(image, network), label)
        loss.backward()
        optimizer.step()
        if index >= warmup:
            step_times.append(time.perf_counter() - started)
    network.eval()
    window_times = []
    with torch.no_grad():
        for index in range(warmup + steps):
            started = time.perf_counter()
            inferer(image[:1], network)
            if index >= warmup:
                window_times.append(time.perf_counter() - started)
    step_seconds, window_seconds = statistics.median(step_times), statistics.median(window_times)
    network.load_state_dict(saved)
    optimizer.state.clear()
    return step_seconds, window_seconds


def _windows_per_case(plan: dict[str, Any], shape: Sequence[float], overlap: float = 0.5) -> int:
    """Windows a sliding-window / slice inference of a median case runs."""
    roi = plan["roi_size"]
    if plan["configuration"] == "3d" or plan["spatial_dims"] == 2:
        return math.prod(
            max(1, math.ceil((edge - r) / (r * (1 - overlap))) + 1)
            for edge, r in zip(shape, roi, strict=True)
        )
    # slices: one window per slice along each slice axis (the in-plane patch covers the slice)
    return int(sum(round(shape[axis]) for axis in plan["slice_axes"]))


def measure_costs(
    plan: dict[str, Any],
    chains: tuple[Any, Any],
    parts: TrainingParts,
    cases: Sequence[dict],
    steps: int = 5,
    warmup: int = 3,
) -> dict[str, float]:
    """Measured seconds: caching per case, a training step, validation per case (see the module doc).

    Args:
        chains: the bundle's (training chain, validation chain), MONAI ``Compose`` objects.
        parts: the bundle's network, loss, optimiser and training inferer.
        cases: a few datalist items ({"image", "label"}) to time the chains on (2 or 3 are enough).
    """
    train_chain, eval_chain = chains
    cached_part, random_part = _split_chain(train_chain)
    started = time.perf_counter()
    cached = [_apply(cached_part, dict(case)) for case in cases]
    cache_seconds = (time.perf_counter() - started) / len(cases)
    started = time.perf_counter()
    for case in cached:
        _apply(random_part, dict(case))
    sample_seconds = (time.perf_counter() - started) / len(cases)
    shape = list(eval_chain(dict(cases[0]))["image"].shape[1:])
    network_step, window = _network_seconds(parts, plan, steps, warmup)
    return {
        "cache_seconds_per_case": round(cache_seconds, 4),
        "step_seconds": round(network_step + plan["batch_size"] * sample_seconds, 4),
        "network_step_seconds": round(network_step, 4),
        "data_seconds_per_step": round(plan["batch_size"] * sample_seconds, 4),
        "validation_seconds_per_case": round(window * _windows_per_case(plan, shape), 4),
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
