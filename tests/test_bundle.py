"""The hippocampus bundle through MONAI's own bundle machinery."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import FAST_TRAIN, HIPPOCAMPUS, HIPPOCAMPUS_BUNDLE, require, run_monai_bundle
from unet_monai.bundle import load_workflow, parse_override
from unet_monai.networks import RonnebergerUNet
from unet_monai.transforms import neighbour_channels

CONFIGS = HIPPOCAMPUS_BUNDLE / "configs"


def test_metadata_describes_the_2_5d_input_and_three_classes() -> None:
    """(Files, ids and shared defaults: tests/test_bundle_contract.py.)"""
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    assert train["neighbours"] == inference["neighbours"]
    assert image["num_channels"] == neighbour_channels(1, train["neighbours"]) == len(image["channel_def"])
    assert pred["num_channels"] == 3
    assert pred["channel_def"] == {"0": "background", "1": "anterior", "2": "posterior"}


def test_network_switches_with_one_override() -> None:
    default = load_workflow(HIPPOCAMPUS_BUNDLE, "train")
    assert isinstance(default.parser.get_parsed_content("network_def"), RonnebergerUNet)
    for name, cls_name in (
        ("attention_unet", "AttentionUnet"),
        ("monai_unet", "UNet"),
        ("basic_unet", "BasicUNet"),
    ):
        workflow = load_workflow(HIPPOCAMPUS_BUNDLE, "train", **{"network_def#name": name})
        network = workflow.parser.get_parsed_content("network_def")
        assert type(network).__name__ == cls_name
        channels = workflow.parser.get_parsed_content("network_def#in_channels")  # 1, or 3 with 2.5D
        assert network(torch.zeros(2, channels, 48, 64)).shape == (2, 3, 48, 64)


def test_one_epoch_training_on_synthetic_data_via_monai_bundle_run(
    tmp_path: Path, synthetic_dataset: Path
) -> None:
    """`python -m monai.bundle run` itself, as a user types it, from the repository root."""
    output = run_monai_bundle(
        CONFIGS / "train.json",
        {"dataset_dir": str(synthetic_dataset), "bundle_root": str(tmp_path), **FAST_TRAIN},
    )
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "val_mean_dice" in output
    events = list((tmp_path / "runs").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard log written"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert {"train_loss", "val_mean_dice", "val_dice_anterior"} <= set(accumulator.Tags()["scalars"])


def test_one_epoch_training_on_real_hippocampus_cases(tmp_path: Path) -> None:
    workflow = load_workflow(
        HIPPOCAMPUS_BUNDLE,
        "train",
        dataset_dir=str(require(HIPPOCAMPUS)),
        num_cases=6,
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        **FAST_TRAIN,
    )
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert trainer.state.epoch == 1 and trainer.state.iteration == 3  # 5 training cases, batch 2
    metrics = evaluator.state.metrics
    assert {"val_mean_dice", "val_dice_anterior", "val_dice_posterior", "val_mean_iou"} <= set(metrics)
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0
    assert (tmp_path / "models" / "model.pt").is_file()


def test_parse_override() -> None:
    assert parse_override("learning_rate=0.001") == ("learning_rate", 0.001)
    assert parse_override("roi_size=[32,32]") == ("roi_size", [32, 32])
    assert parse_override("network_def#name=monai_unet") == ("network_def#name", "monai_unet")
