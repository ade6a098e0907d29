"""The LGG bundle (kaggle_3m TIFF layout): loader, patient split, bad input, training through monai.bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import tifffile
import torch
from monai.bundle import ConfigParser, verify_net_in_out
from monai.transforms import LoadImage

from tests.conftest import REPO_ROOT, SHARED_DATA, assert_scripted_export_matches, require, run_monai_bundle
from unet_monai.bundle import load_workflow, run_workflow
from unet_monai.cli import main as cli_main
from unet_monai.data.lgg_layout import (
    build_lgg_eval_transforms,
    build_lgg_train_transforms,
    held_out_patients,
    lgg_datalist,
    lgg_image_files,
    patient_ids,
    split_by_patient,
)

LGG = SHARED_DATA / "lgg-kaggle3m-subset" / "kaggle_3m"
LGG_BUNDLE = REPO_ROOT / "bundles" / "lgg_unet2d"
CONFIGS = LGG_BUNDLE / "configs"
OURS = json.loads((CONFIGS / "ours.json").read_text())  # the "ours" recipe overlay
PATIENT = "TCGA_CS_4941_19960909"
# Two patients (28 + 20 slices), small images and a tiny network: one epoch takes seconds.
SMOKE = {
    "patients": ["TCGA_CS_4942_19970222", "TCGA_CS_6668_20011025"],
    "roi_size": [64, 64],
    "network_def#features": 4,
    "batch_size": 8,
    "train#trainer#max_epochs": 1,
}


def _patient_copy(tmp_path: Path, slices: tuple[int, ...] = (11, 12, 13)) -> Path:
    """A kaggle_3m-like folder in tmp with a few real slices of one patient; returns the patient folder."""
    folder = tmp_path / "kaggle_3m" / PATIENT
    folder.mkdir(parents=True)
    for n in slices:
        for name in (f"{PATIENT}_{n}.tif", f"{PATIENT}_{n}_mask.tif"):
            shutil.copy(require(LGG) / PATIENT / name, folder / name)
    return folder


def _one_line_error(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    return message


def test_metadata_takes_three_channels() -> None:
    """(Files, ids and the output channel: tests/test_bundle_contract.py.)"""
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1


def test_datalist_groups_slices_by_patient() -> None:
    items = lgg_datalist(require(LGG))
    assert len(items) == 109
    assert patient_ids(items) == sorted(p.name for p in LGG.iterdir() if p.is_dir())
    for item in items:
        image, label = Path(item["image"]), Path(item["label"])
        assert image.parent.name == item["patient"] and label.parent == image.parent
        assert label.name == f"{image.stem}_mask.tif" and image.stem == f"{item['patient']}_{item['slice']}"
    first = [item["slice"] for item in items if item["patient"] == PATIENT]
    assert first == list(range(1, 24))  # numeric, not lexical, slice order


def test_split_by_patient_never_shares_a_patient() -> None:
    items = lgg_datalist(require(LGG), check=False)
    patients = patient_ids(items)
    held = []
    for fold in range(len(patients)):
        train, val = split_by_patient(items, fold)
        assert not set(patient_ids(train)) & set(patient_ids(val))
        assert len(train) + len(val) == len(items)
        held += held_out_patients(items, fold)
    assert held == patients  # leave-one-patient-out: each patient held out exactly once
    train, val = split_by_patient(items, 1, num_folds=2)
    assert patient_ids(val) == patients[1::2] and len(patient_ids(train)) == 2
    with pytest.raises(ValueError, match="fold must be in 0..3"):
        split_by_patient(items, 4)


def test_chains_read_channels_first_and_binarise_the_mask() -> None:
    item = {"image": str(require(LGG) / PATIENT / f"{PATIENT}_12.tif")}
    item["label"] = item["image"].replace(".tif", "_mask.tif")
    raw_image, raw_mask = tifffile.imread(item["image"]), tifffile.imread(item["label"])
    assert set(np.unique(raw_mask)) == {0, 255}
    sample = build_lgg_train_transforms(intensity="range")(dict(item))
    assert sample["image"].shape == (3, 256, 256) and sample["label"].shape == (1, 256, 256)
    # PILReader gives (x, y): the transpose of tifffile's (row, column), for image and mask alike.
    np.testing.assert_allclose(
        sample["image"].numpy(), np.moveaxis(raw_image, -1, 0).transpose(0, 2, 1) / 255.0
    )
    assert set(np.unique(sample["label"].numpy())) == {0.0, 1.0}
    np.testing.assert_array_equal(sample["label"][0].numpy(), (raw_mask > 0).T)
    # ITKReader reads these TIFFs into the same arrays.
    itk_image = LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=True)(item["image"])
    np.testing.assert_array_equal(itk_image.numpy(), np.moveaxis(raw_image, -1, 0).transpose(0, 2, 1))
    zscored = build_lgg_eval_transforms(intensity="zscore", resize_to=[128, 128])(dict(item))
    assert zscored["image"].shape == (3, 128, 128) and zscored["label"].shape == (1, 256, 256)
    assert torch.allclose(zscored["image"].mean(dim=(1, 2)), torch.zeros(3), atol=1e-4)
    # ``channels`` keeps some of the three: [1] is FLAIR alone, the same pixels as channel 1 of all three.
    flair = build_lgg_train_transforms(intensity="range", channels=[1])(dict(item))
    assert flair["image"].shape == (1, 256, 256)
    np.testing.assert_allclose(flair["image"][0].numpy(), sample["image"][1].numpy())
    flair_eval = build_lgg_eval_transforms(intensity="zscore", resize_to=[128, 128], channels=[1])(dict(item))
    assert flair_eval["image"].shape == (1, 128, 128)


def test_patient_zscore_uses_the_whole_patient() -> None:
    items = lgg_datalist(require(LGG), [PATIENT])
    chain = build_lgg_train_transforms(intensity="zscore_patient", channels=[1])
    stack = torch.stack([chain(dict(item))["image"] for item in items])
    assert stack.shape == (len(items), 1, 256, 256)
    # over the patient's slices together: mean 0, std 1; a single slice is not standardised on its own
    assert abs(stack.mean().item()) < 1e-4 and stack.std().item() == pytest.approx(1.0, abs=1e-3)
    flair = np.stack([tifffile.imread(item["image"])[..., 1] for item in items]).astype(np.float64)
    one = items[12]
    expected = (tifffile.imread(one["image"])[..., 1].T - flair.mean()) / flair.std()
    np.testing.assert_allclose(chain(dict(one))["image"][0].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_image_without_its_mask(tmp_path: Path) -> None:
    folder = _patient_copy(tmp_path)
    (folder / f"{PATIENT}_12_mask.tif").unlink()
    with pytest.raises(FileNotFoundError) as error:
        lgg_datalist(folder.parent)
    assert "no mask beside it" in _one_line_error(error, folder / f"{PATIENT}_12.tif")


def test_mask_of_the_wrong_size(tmp_path: Path) -> None:
    folder = _patient_copy(tmp_path)
    mask = folder / f"{PATIENT}_13_mask.tif"
    tifffile.imwrite(mask, tifffile.imread(mask)[:128, :200])
    with pytest.raises(ValueError) as error:
        lgg_datalist(folder.parent)
    assert "differs from its image's" in _one_line_error(error, mask)


def test_truncated_and_unreadable_tiffs(tmp_path: Path) -> None:
    folder = _patient_copy(tmp_path)
    image = folder / f"{PATIENT}_11.tif"
    image.write_bytes(image.read_bytes()[:60_000])
    with pytest.raises(ValueError) as error:
        lgg_datalist(folder.parent)
    assert "unreadable or truncated TIFF" in _one_line_error(error, image)
    with pytest.raises(ValueError) as error:
        lgg_image_files(folder)  # the inference file list checks too
    _one_line_error(error, image)
    image.write_bytes(b"not a tiff")
    mask = folder / f"{PATIENT}_11_mask.tif"
    with pytest.raises(ValueError) as error:
        lgg_datalist(folder.parent)
    _one_line_error(error, image)
    image.unlink()
    with pytest.raises(FileNotFoundError) as error:
        lgg_datalist(folder.parent)
    assert "mask without its image" in _one_line_error(error, mask)


def test_cli_reports_a_bad_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _patient_copy(tmp_path)
    mask = folder / f"{PATIENT}_13_mask.tif"
    tifffile.imwrite(mask, np.zeros((100, 100), np.uint8))
    code = cli_main(["train", "--bundle", str(LGG_BUNDLE), "--data", str(folder.parent), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and str(mask) in err, err


def test_ours_overlay_changes_the_recipe() -> None:
    """configs/ours.json merged over train.json (as monai.bundle run --config_file [train, ours] does), and
    the same values given as overrides (as unet-monai --set does)."""
    original = load_workflow(LGG_BUNDLE, "train").parser
    merged = ConfigParser()
    merged.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "ours.json")])
    ours = load_workflow(LGG_BUNDLE, "train", **OURS).parser
    for key in OURS:
        assert merged.get_parsed_content(key) == ours.get_parsed_content(key), key
    assert (
        original.get_parsed_content("intensity") == "range"
        and ours.get_parsed_content("intensity") == "zscore"
    )
    assert type(original.get_parsed_content("loss")).__name__ == "DiceLoss"
    assert type(ours.get_parsed_content("loss")).__name__ == "DiceLoss"  # DiceCE collapsed here (docs)
    assert original.get_parsed_content("flip_axes") == [] and ours.get_parsed_content("flip_axes") == [0]
    assert original.get_parsed_content("batch_size") == 16 and ours.get_parsed_content("batch_size") == 8
    assert ours.get_parsed_content("train#dataloader#batch_size") == 8
    # ours reads FLAIR alone; the original all three channels
    assert original.get_parsed_content("channels") is None and ours.get_parsed_content("channels") == [1]
    assert ours.get_parsed_content("network_def").in_channels == 1
    assert original.get_parsed_content("largest_component") is False
    # Adam 0.01: constant in the original (power 0), decayed to 0 in ours (power 0.9); both one override away
    constant = load_workflow(LGG_BUNDLE, "train", **{**OURS, "lr_decay_power": 0.0}).parser
    for parser, lr, power in ((original, 0.01, 0.0), (ours, 0.01, 0.9), (constant, 0.01, 0.0)):
        optimizer = parser.get_parsed_content("optimizer")
        scheduler = parser.get_parsed_content("lr_scheduler")
        assert optimizer.param_groups[0]["lr"] == lr and scheduler.power == power
        epochs = parser.get_parsed_content("train#trainer#max_epochs")
        for _ in range(epochs - 1):
            scheduler.step()
        expected_last = lr if power == 0 else lr * (1 / epochs) ** power
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected_last)
    network = original.get_parsed_content("network_def")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    assert network(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 64, 64)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One short epoch of the bundle through `python -m monai.bundle run`, as a user types it."""
    root = tmp_path_factory.mktemp("lgg_bundle")
    output = run_monai_bundle(
        CONFIGS / "train.json", {"dataset_dir": str(require(LGG)), "bundle_root": str(root), **SMOKE}
    )
    return root, output


def test_one_epoch_through_monai_bundle_run(smoke_run: tuple[Path, str]) -> None:
    root, output = smoke_run
    assert "holds out ['TCGA_CS_4942_19970222'] | 28 training slices, 20 held-out slices" in output
    assert "val_dice" in output and "val_loss" in output
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "model_best.pt").is_file()
    assert list((root / "runs").glob("events.out.tfevents.*"))


def test_evaluate_and_infer_with_the_trained_checkpoint(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = smoke_run
    overrides = {k: v for k, v in SMOKE.items() if not k.startswith("train#")}
    # The checkpoint comes from the original recipe; "ours" here runs evaluate.json's mirror-TTA
    # path on it (the same network), so this checks the plumbing, not the figure.
    # The checkpoint has 3 input channels: ours here reads all three, and keeps the largest 3D component.
    ours_on_3_channels = {**OURS, "channels": None, "largest_component": True}
    evaluation = run_workflow(
        LGG_BUNDLE,
        "evaluate",
        dataset_dir=str(LGG),
        bundle_root=str(root),
        **{**ours_on_3_channels, **overrides},
    )
    metrics = evaluation.parser.get_parsed_content("validate#evaluator").state.metrics
    assert {"val_dice", "val_slice_dice", "val_loss"} <= set(metrics) and 0.0 <= metrics["val_dice"] <= 1.0
    assert len(list((root / "eval" / "pred").glob("*_seg.tif"))) == 20
    assert (root / "eval" / "val_slice_dice_raw.csv").is_file()
    # "ours" keeps the largest 3D component of the patient's masks, then scores the written masks.
    images = sorted((LGG / "TCGA_CS_4942_19970222").glob("*_[0-9]*.tif"))
    images = [image for image in images if not image.stem.endswith("_mask")]
    predicted = np.stack([tifffile.imread(root / "eval" / "pred" / f"{i.stem}_seg.tif") > 0 for i in images])
    truth = np.stack([tifffile.imread(i.with_name(f"{i.stem}_mask.tif")) > 0 for i in images])
    labels, count = scipy.ndimage.label(predicted, structure=np.ones((3, 3, 3)))
    assert count <= 1, "more than one 3D component left"
    total = predicted.sum() + truth.sum()
    expected = 1.0 if total == 0 else 2 * np.logical_and(predicted, truth).sum() / total
    rows = (root / "eval" / "patient_dice.csv").read_text().splitlines()
    assert rows[0] == "patient,dice" and rows[1].startswith("TCGA_CS_4942_19970222,")
    assert float(rows[1].split(",")[1]) == pytest.approx(expected, abs=1e-4)
    # `unet-monai infer` on a patient folder as it is: masks are skipped, one mask per image comes back.
    patient = LGG / "TCGA_CS_4942_19970222"
    settings = ["--set", "roi_size=[64,64]", "--set", "network_def#features=4"]
    args = ["infer", "--bundle", str(LGG_BUNDLE), "--input", str(patient), "--output", str(tmp_path)]
    assert cli_main(args + ["--checkpoint", str(root / "models" / "model.pt")] + settings) == 0
    masks = sorted(tmp_path.glob("*_seg.tif"))
    assert len(masks) == 20
    written = tifffile.imread(masks[0])
    assert written.shape == (256, 256) and written.dtype == np.uint8 and set(np.unique(written)) <= {0, 255}
    # with the 3D step on, inference leaves at most one 3D component of the patient's masks
    step = ["--set", "intensity=zscore", "--set", "mirror_axes=[0]", "--set", "largest_component=true"]
    out = tmp_path / "largest"
    assert (
        cli_main(args[:-1] + [str(out), "--checkpoint", str(root / "models" / "model.pt")] + settings + step)
        == 0
    )
    volume = np.stack([tifffile.imread(mask) > 0 for mask in sorted(out.glob("*_seg.tif"))])
    assert volume.shape[0] == 20 and scipy.ndimage.label(volume, structure=np.ones((3, 3, 3)))[1] <= 1


def test_saved_masks_keep_the_files_orientation(tmp_path: Path) -> None:
    """A reference mask read by the eval chain and written by inference.json's writer is the same file."""
    saver = (
        load_workflow(LGG_BUNDLE, "inference", output_dir=str(tmp_path))
        .parser.get_parsed_content("postprocessing")
        .transforms[-1]
    )
    mask = require(LGG) / PATIENT / f"{PATIENT}_12_mask.tif"
    item = {"image": str(mask).replace("_mask.tif", ".tif"), "label": str(mask)}
    saver({"pred": build_lgg_eval_transforms()(item)["label"]})
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / f"{PATIENT}_12_mask_seg.tif"), tifffile.imread(mask)
    )


def test_verify_net_in_out_and_torchscript_export(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = smoke_run
    common = {"meta_file": str(CONFIGS / "metadata.json"), "config_file": str(CONFIGS / "inference.json")}
    verify_net_in_out(net_id="network_def", bundle_root=str(root), **common)
    verify_net_in_out(net_id="network_def", n=4, **{"network_def#features": 4}, **common)
    # Scripted (not traced): the exported network takes any size divisible by 2**depth.
    shapes = [(2, 3, 256, 256), (1, 3, 48, 80)]  # the data's size and a non-square one
    overrides = {"network_def#features": 4}
    assert_scripted_export_matches(LGG_BUNDLE, root / "models" / "model.pt", overrides, shapes, tmp_path)
