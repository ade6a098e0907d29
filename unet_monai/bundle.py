"""Run a bundle's configs (train / evaluate / inference) the way ``python -m monai.bundle run`` does.

The CLI and the pipelines go through here so that they run exactly the JSON a researcher runs
with MONAI's own command, with ``bundle_root`` set to the bundle's folder wherever it lives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

WORKFLOW_TYPES = {"train": "train", "evaluate": "train", "inference": "infer"}


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
    overrides.setdefault("bundle_root", str(bundle_dir))
    workflow = ConfigWorkflow(
        config_file=config_files(bundle_dir, name),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type=WORKFLOW_TYPES[name],
        **overrides,
    )
    return workflow


def run_workflow(bundle_dir: str | Path, name: str, **overrides: Any) -> ConfigWorkflow:
    """Initialise, run and finalise a bundle workflow; returns it for inspection."""
    workflow = load_workflow(bundle_dir, name, **overrides)
    workflow.initialize()
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
