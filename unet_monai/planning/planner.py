"""``unet-monai plan``: fingerprint a dataset, plan, write the bundle, and fit its epochs to a budget.

The order matters for honesty: the bundle is written first, then its own training and validation
chains (parsed from its train.json, as training will parse them) are timed on a few of its cases with
the planned network, and the epochs that fit the budget are written back into train.json, plan.json
and the README.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from unet_monai.planning.budget import fit_epochs, probe_training
from unet_monai.planning.bundle_writer import write_bundle
from unet_monai.planning.fingerprint import fingerprint_dataset
from unet_monai.planning.plan import make_plan

logger = logging.getLogger(__name__)


def default_device() -> str:
    """ "cuda" where PyTorch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fit_budget(bundle: Path, plan: dict[str, Any], budget_minutes: float) -> dict[str, Any]:
    """Probe the bundle's real training on this machine (``probe_training``) and return the plan with
    the epochs that fit ``budget_minutes``."""
    from unet_monai.bundle import load_workflow

    train, validation = load_workflow(bundle, "train").parser.get_parsed_content("split")
    costs = probe_training(bundle, plan, len(train))
    fitted = fit_epochs(costs, len(train), len(validation), plan["batch_size"], budget_minutes)
    logger.info(
        "fold 0 of %d: %d training, %d validation cases", plan["num_folds"], len(train), len(validation)
    )
    return plan | fitted


def plan_bundle(
    output: str | Path,
    data_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    budget_minutes: float | None = None,
    configuration: str = "auto",
    device: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    command: str = "unet-monai plan",
    fingerprint: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a planned bundle to ``output`` from an MSD folder (``data_dir``) or ``images_dir`` +
    ``labels_dir``; returns the plan (with ``max_epochs`` fitted when ``budget_minutes`` is given).
    ``fingerprint``: the dataset's, when already computed (else it is computed here). An ``output`` that
    holds a bundle is refused unless ``overwrite`` (its models/ and runs/ are never touched).

    Raises:
        BadInputError: the dataset has a problem (one line naming the file).
        FileExistsError: ``output`` holds a bundle and ``overwrite`` is off.
        ValueError: a bad option, or a budget too small for one epoch (says how much would do).
    """
    if (Path(output) / "configs").exists() and not overwrite:
        raise FileExistsError(
            f"{output}: holds a bundle already; give another --output, or --force to replace its configs"
        )
    if fingerprint is None:
        fingerprint = fingerprint_dataset(
            data_dir, images_dir, labels_dir, workers=workers, progress=progress
        )
    plan = make_plan(fingerprint, configuration=configuration, device=device or default_device())
    dataset_dir = data_dir if data_dir is not None else images_dir
    arguments = (fingerprint, dataset_dir, labels_dir if data_dir is None else None)
    output = Path(output)
    # Written and probed beside the output first: a failure (a budget too small, a bad case met by the
    # probe) leaves nothing behind, and a bundle being replaced keeps its configs until the new ones are
    # complete.
    staging = output.parent / f".partial-plan-{output.name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_bundle(staging, plan, *arguments, name=output.resolve().name, command=command)
        if budget_minutes is not None:
            plan = fit_budget(staging, plan, budget_minutes)
            write_bundle(staging, plan, *arguments, name=output.resolve().name, command=command)
        move_into(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return plan


def move_into(staging: Path, output: Path) -> None:
    """Every file of ``staging`` renamed to its place under ``output`` (other files there stay)."""
    for source in sorted(path for path in staging.rglob("*") if path.is_file()):
        target = output / source.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    (output / "models").mkdir(parents=True, exist_ok=True)
