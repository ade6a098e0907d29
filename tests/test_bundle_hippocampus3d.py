"""The 3D hippocampus bundle: a 3D U-Net on patches, whole volumes through SlidingWindowInferer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import verify_net_in_out
from monai.inferers import SlidingWindowInferer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import (
    HIPPOCAMPUS,
    REPO_ROOT,
    assert_scripted_export_matches,
    require,
    run_monai_bundle,
)
from unet_monai.bundle import load_workflow, run_workflow
from unet_monai.cli import main as cli_main
from unet_monai.dicom.seg import read_seg, validate_with_dciodvfy
from unet_monai.dicom.series import read_series
from unet_monai.dicom.write_series import write_series
from unet_monai.inference import MirrorTTAInferer
from unet_monai.networks import RonnebergerUNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet3d"
CONFIGS = BUNDLE / "configs"
# A tiny network and window: what every test trains and must then be told at inference.
NETWORK = {"features": 4, "roi_size": [16, 16, 16]}
TINY = {**NETWORK, "num_samples": 1, "batch_size": 2, "val_interval": 1, "sw_batch_size": 16}
SMOKE = {**TINY, "max_epochs": 1}
NETWORK_SETTINGS = [arg for key, value in NETWORK.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def test_metadata_and_a_3d_network() -> None:
    """(Files, ids, one default per setting, channels against the network: tests/test_bundle_contract.py.)"""
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    assert train["overlap"] == inference["overlap"]
    assert train["network_def"]["spatial_dims"] == 3 and train["network_def"]["name"] == "ronneberger_unet"
    assert image["num_channels"] == 1 == train["network_def"]["in_channels"]
    assert len(image["spatial_shape"]) == len(pred["spatial_shape"]) == 3
    assert pred["num_channels"] == 3 == train["num_classes"]
    assert pred["channel_def"] == {"0": "background", "1": "anterior", "2": "posterior"}
    assert all(size % 2 ** train["depth"] == 0 for size in train["roi_size"])


def test_recipe_network_and_sliding_window_inferers() -> None:
    """A 3D Ronneberger U-Net; validation, evaluation and inference all slide the training patch over
    whole volumes (overlap 0.5, Gaussian), and give outputs of the volume's own (odd) size."""
    train = load_workflow(BUNDLE, "train").parser
    network = train.get_parsed_content("network_def")
    assert isinstance(network, RonnebergerUNet) and network.depth == 3
    roi_size = train.get_parsed_content("roi_size")
    validation = train.get_parsed_content("validate#inferer")
    evaluation = load_workflow(BUNDLE, "evaluate").parser.get_parsed_content("validate#inferer")
    inference = load_workflow(BUNDLE, "inference").parser.get_parsed_content("inferer")
    for inferer in (validation, evaluation.inferer, inference.inferer):
        assert isinstance(inferer, SlidingWindowInferer)
        assert list(inferer.roi_size) == roi_size and inferer.overlap == 0.5
        assert str(inferer.mode) == "gaussian"
    assert isinstance(evaluation, MirrorTTAInferer) and evaluation.spatial_axes == (0,)  # left-right
    small = load_workflow(BUNDLE, "inference", **NETWORK).parser
    net = small.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = small.get_parsed_content("inferer")(torch.randn(1, 1, 35, 50, 35), net)
    assert out.shape == (1, 3, 35, 50, 35)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> tuple[Path, str]:
    """One tiny epoch through `python -m monai.bundle run`, as a user types it."""
    root = tmp_path_factory.mktemp("hippocampus3d")
    output = run_monai_bundle(
        CONFIGS / "train.json", {"dataset_dir": str(synthetic_dataset), "bundle_root": str(root), **SMOKE}
    )
    return root, output


def test_one_epoch_through_monai_bundle_run(smoke_run: tuple[Path, str]) -> None:
    root, output = smoke_run
    assert "3D U-Net (depth 3 , patch [16, 16, 16] ) training on 5 cases, validating on 1 cases" in output
    assert "val_mean_dice" in output
    assert (root / "models" / "model.pt").is_file()
    events = list((root / "runs").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard log written"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert {"train_loss", "val_mean_dice", "val_dice_anterior", "val_dice_posterior"} <= set(
        accumulator.Tags()["scalars"]
    )


def test_evaluate_writes_masks_on_the_label_grid(
    smoke_run: tuple[Path, str], synthetic_dataset: Path
) -> None:
    """evaluate.json on the trained checkpoint: metrics, and each held-out mask back on its label's grid
    (the synthetic volumes have rotated, anisotropic affines, so this checks the inversion)."""
    root, _ = smoke_run
    overrides = {key: value for key, value in TINY.items() if key != "val_interval"}
    evaluation = run_workflow(
        BUNDLE, "evaluate", dataset_dir=str(synthetic_dataset), bundle_root=str(root), **overrides
    )
    parser = evaluation.parser
    metrics = parser.get_parsed_content("validate#evaluator").state.metrics
    assert {"val_mean_dice", "val_dice_anterior", "val_dice_posterior", "val_mean_iou"} <= set(metrics)
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0
    held_out = parser.get_parsed_content("split")[1]
    assert len(held_out) == 1
    for item in held_out:
        label = nib.load(item["label"])
        name = Path(item["label"]).name.replace(".nii.gz", "_seg.nii.gz")
        mask = nib.load(root / "eval" / "pred" / name)
        assert mask.shape == label.shape
        np.testing.assert_allclose(mask.affine, label.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    assert (root / "eval" / "summary.json").is_file() and (root / "eval" / "metrics.csv").is_file()


def test_unet_monai_infer_keeps_the_inputs_geometry(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = smoke_run
    source = sorted((require(HIPPOCAMPUS) / "imagesTr").glob("*.nii.gz"))[0]
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(source), "--output", str(tmp_path)]
    assert cli_main([*args, "--checkpoint", str(root / "models" / "model.pt"), *NETWORK_SETTINGS]) == 0
    mask_name = source.name.replace(".nii.gz", "_seg.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == [mask_name, "inference_report.json"]
    mask = nib.load(tmp_path / mask_name)
    image = nib.load(source)
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


def test_unet_monai_train_on_real_cases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`unet-monai train` on four real volumes (three train, one validates): one epoch, a checkpoint."""
    settings = {**SMOKE, "num_cases": 4, "bundle_root": str(tmp_path)}
    args = ["train", "--bundle", str(BUNDLE), "--data", str(require(HIPPOCAMPUS))]
    assert cli_main(args + [a for k, v in settings.items() for a in ("--set", f"{k}={json.dumps(v)}")]) == 0
    assert f"best checkpoint: {tmp_path / 'models' / 'model.pt'}" in capsys.readouterr().out
    assert (tmp_path / "models" / "model.pt").is_file()


def test_verify_net_in_out_and_scripted_export(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = smoke_run
    common = {"meta_file": str(CONFIGS / "metadata.json"), "config_file": str(CONFIGS / "inference.json")}
    verify_net_in_out(net_id="network_def", n=2, features=4, **common)  # 16x16x16 input
    shapes = [(1, 1, 16, 16, 16), (2, 1, 32, 48, 32)]
    assert_scripted_export_matches(BUNDLE, root / "models" / "model.pt", {"features": 4}, shapes, tmp_path)


def test_bad_config_values_give_one_clear_line(
    tmp_path: Path, synthetic_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    """A window the network cannot take, or a network name that is not registered, stops the run before
    any data is cached, with one line naming the problem."""
    train = ["train", "--bundle", str(BUNDLE), "--data", str(synthetic_dataset), "--epochs", "1"]
    train += ["--set", f"bundle_root={json.dumps(str(tmp_path))}"]
    assert cli_main([*train, "--set", "roi_size=[36,48,32]"]) == 2
    assert "spatial size 36 is not divisible by 2**depth = 8" in capsys.readouterr().err
    assert cli_main([*train, "--set", "network_def#name=vnet_typo"]) == 2
    error = capsys.readouterr().err
    assert "unknown network 'vnet_typo'" in error and "ronneberger_unet" in error
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps what a config expression raises
        load_workflow(BUNDLE, "inference", roi_size=[32, 50, 32]).initialize()
    cause = raised.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ValueError) and "spatial size 50 is not divisible by 2**depth = 8" in str(cause)
    assert not (tmp_path / "models").exists()


def test_dicom_series_in_dicom_seg_out(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    """The 3D bundle on a real volume written as a DICOM series: a SEG that dciodvfy accepts and that
    holds, frame for frame, the NIfTI mask of the same run."""
    root, _ = smoke_run
    source = nib.load(sorted((require(HIPPOCAMPUS) / "imagesTr").glob("*.nii.gz"))[0])
    series = tmp_path / "series"
    write_series(np.asarray(source.dataobj), source.affine, series, modality="MR", shuffle_seed=1)
    out = tmp_path / "out"
    args = [
        "infer",
        "--bundle",
        str(BUNDLE),
        "--input",
        str(series),
        "--output",
        str(out),
        "--format",
        "both",
    ]
    assert cli_main([*args, "--checkpoint", str(root / "models" / "model.pt"), *NETWORK_SETTINGS]) == 0
    volume = read_series(series)
    seg_path = out / f"{volume.series_uid}_seg.dcm"
    mask = nib.load(out / f"{volume.series_uid}_seg.nii.gz")
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-4)
    sources = [pydicom.dcmread(path) for path in volume.files]
    np.testing.assert_array_equal(read_seg(seg_path, sources), volume.frames(np.asarray(mask.dataobj)))
    if shutil.which("dciodvfy") is None:
        pytest.skip(
            "dciodvfy not installed (apt-get install dicom3tools): SEG content checked, not validated"
        )
    assert validate_with_dciodvfy(seg_path) == []
