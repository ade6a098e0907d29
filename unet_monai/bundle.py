"""Run a bundle's configs (train / evaluate / inference) the way ``python -m monai.bundle run`` does.

The CLI and the pipelines go through here so that they run exactly the JSON a researcher runs
with MONAI's own command, with ``bundle_root`` set to the bundle's folder wherever it lives.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

from unet_monai.data.checks import check_datalist, check_positive_int, check_writable_folder

WORKFLOW_TYPES = {"train": "train", "evaluate": "train", "inference": "infer"}
# This repository's own bundles; others get a warning that their configs run code.
OWN_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
# Config ids checked before a workflow runs: the datalists its datasets read, and its output folders.
DATASET_IDS = {
    "train": ("datalist", "train#dataset#data", "validate#dataset#data"),
    "evaluate": ("datalist", "validate#dataset#data"),
    "inference": ("datalist", "dataset#data"),
}
OUTPUT_IDS = {"train": ("output_dir", "ckpt_dir"), "evaluate": ("output_dir",), "inference": ("output_dir",)}
EPOCHS_ID = "train#trainer#max_epochs"

logger = logging.getLogger(__name__)
_warned_bundles: set[Path] = set()


def warn_untrusted(bundle_dir: Path) -> None:
    """Warn, once per bundle folder, that a bundle from outside this repository runs its configs' code.

    Bundle configs hold Python expressions (``$...``) and ``_target_`` imports that run when the bundle
    is parsed, like a script. This repository's own bundles are trusted: warning on every test and CLI
    run of them would only teach users to ignore the warning.
    """
    bundle_dir = bundle_dir.resolve()
    if bundle_dir.is_relative_to(OWN_BUNDLES) or bundle_dir in _warned_bundles:
        return
    _warned_bundles.add(bundle_dir)
    logger.warning(
        "%s: bundle configs can execute arbitrary code ($-expressions, _target_ imports); "
        "only run bundles you trust",
        bundle_dir,
    )


def config_files(bundle_dir: str | Path, name: str) -> list[str]:
    """The config files for a workflow: ``evaluate`` is layered on ``train`` as in MONAI's model zoo."""
    configs = Path(bundle_dir) / "configs"
    names = ["train", "evaluate"] if name == "evaluate" else [name]
    files = [configs / f"{n}.json" for n in names]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: bundle {bundle_dir} has no {file.name}")
    return [str(f) for f in files]


def load_workflow(bundle_dir: str | Path, name: str, **overrides: Any) -> ConfigWorkflow:
    """Parse a bundle workflow with overrides (``"train#trainer#max_epochs": 2``, ``dataset_dir`` ...).

    Args:
        bundle_dir: the bundle folder (holding ``configs/``).
        name: "train", "evaluate" or "inference".
        overrides: config ids and the values that replace theirs; ``bundle_root`` defaults to ``bundle_dir``.
    """
    if name not in WORKFLOW_TYPES:
        raise ValueError(f"workflow must be one of {sorted(WORKFLOW_TYPES)}, got {name!r}")
    bundle_dir = Path(bundle_dir).resolve()
    warn_untrusted(bundle_dir)
    overrides.setdefault("bundle_root", str(bundle_dir))
    workflow = ConfigWorkflow(
        config_file=config_files(bundle_dir, name),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type=WORKFLOW_TYPES[name],
        **overrides,
    )
    return workflow


def check_workflow(workflow: ConfigWorkflow, name: str) -> None:
    """Before a workflow runs: the files its datasets name exist and are readable (one error listing
    every one that does not), training has a positive number of epochs, and its output folders can be
    written. Each problem is a ``BadInputError`` naming the config id."""
    parser = workflow.parser
    for key in DATASET_IDS[name]:
        items = parser.get_parsed_content(key) if key in parser else None
        if isinstance(items, (list, tuple)):
            check_datalist(items, source=key)
    if name == "train" and EPOCHS_ID in parser:
        check_positive_int(parser.get_parsed_content(EPOCHS_ID), EPOCHS_ID)
    for key in OUTPUT_IDS[name]:
        if key in parser:
            check_writable_folder(parser.get_parsed_content(key), key)


def run_workflow(bundle_dir: str | Path, name: str, **overrides: Any) -> ConfigWorkflow:
    """Initialise, check (``check_workflow``), run and finalise a bundle workflow; returns it."""
    workflow = load_workflow(bundle_dir, name, **overrides)
    workflow.initialize()
    check_workflow(workflow, name)
    workflow.run()
    workflow.finalize()
    return workflow


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value), the value read as JSON when it is JSON, else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not of the form key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
