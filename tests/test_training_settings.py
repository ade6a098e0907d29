"""A checkpoint keeps the settings it was trained with, and inference applies them.

``TrainingSettings`` is saved inside model.pt (``{"model": ..., "settings": ...}``); ``load_workflow``
reads it back for inference and evaluation (``trained_settings``), unless an override sets the id.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from unet_monai.bundle import load_workflow, trained_settings
from unet_monai.checkpoints import (
    SETTINGS_KEY,
    CheckpointError,
    TrainingSettings,
    check_fits,
    read_settings,
    read_state_dict,
)

BUNDLE_3D = REPO_ROOT / "bundles" / "hippocampus_unet3d"


def checkpoint_with_settings(folder: Path, values: dict) -> Path:
    """A model.pt holding the 3D bundle's network built with ``values`` and those settings."""
    network = load_workflow(BUNDLE_3D, "inference", **values).parser.get_parsed_content("network_def")
    path = folder / "model.pt"
    settings = TrainingSettings(BUNDLE_3D, values)
    torch.save({"model": network.state_dict(), SETTINGS_KEY: settings.state_dict()}, path)
    return path


def test_settings_name_the_bundle_and_keep_plain_values() -> None:
    settings = TrainingSettings(BUNDLE_3D, {"roi_size": (32, 48, 32), "device": torch.device("cpu")})
    state = settings.state_dict()
    metadata = json.loads((BUNDLE_3D / "configs" / "metadata.json").read_text())
    assert state["bundle"] == metadata["name"] and state["version"] == metadata["version"]
    assert state["values"] == {"roi_size": [32, 48, 32], "device": "cpu"}


def test_a_setting_that_is_no_plain_value_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="training_settings: network: cannot be saved"):
        TrainingSettings(BUNDLE_3D, {"network": torch.nn.Linear(2, 2)})


def test_inference_takes_the_trained_settings(tmp_path: Path) -> None:
    path = checkpoint_with_settings(tmp_path, {"features": 8, "depth": 3})
    assert read_settings(path)["values"] == {"features": 8, "depth": 3}
    workflow = load_workflow(BUNDLE_3D, "inference", ckpt_path=str(path))
    assert workflow.parser.get_parsed_content("features") == 8
    assert workflow.parser.get_parsed_content("depth") == 3
    network = workflow.parser.get_parsed_content("network_def")
    check_fits(network, read_state_dict(path), path)  # without the settings: 32 features, no fit
    with pytest.raises(CheckpointError, match="does not fit"):
        plain = load_workflow(BUNDLE_3D, "inference", ckpt_path=str(path), features=32, depth=3)
        check_fits(plain.parser.get_parsed_content("network_def"), read_state_dict(path), path)


def test_an_override_wins_over_the_trained_setting(tmp_path: Path) -> None:
    path = checkpoint_with_settings(tmp_path, {"features": 8, "depth": 3})
    added = trained_settings(
        BUNDLE_3D, "inference", {"bundle_root": str(BUNDLE_3D), "ckpt_path": str(path), "depth": 2}
    )
    assert added == {"features": 8}


def test_settings_equal_to_the_config_add_nothing(tmp_path: Path) -> None:
    defaults = load_workflow(BUNDLE_3D, "inference").parser
    values = {"features": defaults.get_parsed_content("features")}
    path = checkpoint_with_settings(tmp_path, values)
    assert (
        trained_settings(BUNDLE_3D, "inference", {"bundle_root": str(BUNDLE_3D), "ckpt_path": str(path)})
        == {}
    )


def test_a_plain_state_dict_and_training_have_no_settings(tmp_path: Path) -> None:
    network = load_workflow(BUNDLE_3D, "inference").parser.get_parsed_content("network_def")
    path = tmp_path / "plain.pt"
    torch.save(network.state_dict(), path)
    assert read_settings(path) is None
    assert read_settings(tmp_path / "missing.pt") is None
    overrides = {"bundle_root": str(BUNDLE_3D), "ckpt_path": str(path)}
    assert trained_settings(BUNDLE_3D, "inference", overrides) == {}
    assert trained_settings(BUNDLE_3D, "train", overrides) == {}
