"""The BraTS U-Net variants bundle: datalist, chains, variants and losses, training, inference, study."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import verify_net_in_out
from monai.losses import DiceCELoss, DiceLoss

from tests.conftest import REPO_ROOT, SHARED_DATA, assert_scripted_export_matches, require, run_monai_bundle
from unet_monai.bundle import load_workflow, run_workflow
from unet_monai.cli import main as cli_main
from unet_monai.data.brats_layout import (
    BRAIN,
    LABEL,
    MODALITIES,
    brats_datalist,
    brats_inference_items,
    build_brats_eval_transforms,
    build_brats_train_transforms,
    split_by_patient,
)
from unet_monai.losses import FocalTverskyLoss
from unet_monai.networks.variants import PAPER_BUDGET

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BRATS = SHARED_DATA / "brats2015-subset"
BUNDLE = REPO_ROOT / "bundles" / "brats_unet_variants"
CONFIGS = BUNDLE / "configs"
PATIENTS = [f"brats_2013_pat000{n}_1" for n in range(1, 7)]
VARIANTS = [
    "modular_unet",
    "modular_unet_bn",
    "modular_residual_unet",
    "modular_attention_unet",
    "modular_nas_unet",
    "modular_nas_reduction_unet",
    "modular_efficient_unet",
]
LOSSES = ["dice", "squared_dice", "bce", "dice_ce", "focal_tversky"]
# Two patients (one trains, one is held out), a 48x48 crop and ~30 k parameters: seconds per run.
TINY = {
    "patients": PATIENTS[:2],
    "num_folds": 2,
    "param_budget": 30_000,
    "roi_size": [48, 48],
    "num_samples": 4,
    "patient_draws": 1,
    "batch_size": 1,
}
SMOKE = {**TINY, "network_name": "modular_residual_unet", "loss_name": "bce", "train#trainer#max_epochs": 1}
NETWORK = {key: SMOKE[key] for key in ("network_name", "param_budget", "roi_size")}


def _patient(split: str, name: str) -> Path:
    return require(BRATS) / split / name


def _linked_patient(tmp_path: Path, names: tuple[str, ...] = (*MODALITIES, LABEL, BRAIN)) -> Path:
    """A patient folder in tmp whose files link to a real patient's."""
    folder = tmp_path / "data" / "train" / "brats_2013_pat0005_1"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).symlink_to(_patient("train", folder.name) / name)
    return folder


def _one_line(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    return message


def test_licence_and_metadata() -> None:
    """(Files, ids and channel counts against the network: tests/test_bundle_contract.py.)"""
    assert "CC BY-NC-SA 3.0" in (BUNDLE / "LICENSE").read_text()
    data_format = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]
    assert data_format["inputs"]["image"]["num_channels"] == 2
    assert data_format["inputs"]["image"]["channel_def"] == {"0": "FLAIR", "1": "T1c"}
    assert data_format["outputs"]["pred"]["num_channels"] == 1


def test_datalist_has_one_item_per_patient() -> None:
    items = brats_datalist(require(BRATS))
    assert [item["patient"] for item in items] == PATIENTS  # sorted, across train / validation / test
    for item in items:
        folder = Path(item["label"]).parent
        assert folder.name == item["patient"] and item["image"] == [str(folder / m) for m in MODALITIES]
        assert Path(item["brain"]) == folder / BRAIN
    assert [item["patient"] for item in brats_datalist(BRATS, PATIENTS[4:])] == PATIENTS[4:]
    with pytest.raises(FileNotFoundError, match="no folder for patient"):
        brats_datalist(BRATS, ["brats_2013_pat0009_1"])
    # 3 folds of 2 held-out patients (the bundle's default), leave-one-out with num_folds None
    held = [[item["patient"] for item in split_by_patient(items, fold, 3)[1]] for fold in range(3)]
    assert held == [PATIENTS[0::3], PATIENTS[1::3], PATIENTS[2::3]]
    assert len(split_by_patient(items, 5, None)[1]) == 1
    # inference: a patient folder, one of its files, or a dataset folder
    test_folder = _patient("test", PATIENTS[0])
    assert brats_inference_items(test_folder) == brats_inference_items([str(test_folder / LABEL)])
    assert len(brats_inference_items(BRATS / "test")) == 2


def test_missing_modality_and_shape_mismatch_in_one_line(tmp_path: Path) -> None:
    folder = _linked_patient(tmp_path, (MODALITIES[0], LABEL, BRAIN))
    with pytest.raises(FileNotFoundError) as error:
        brats_datalist(folder.parent.parent)
    assert "missing" in _one_line(error, folder / MODALITIES[1])
    with pytest.raises(FileNotFoundError) as error:
        brats_inference_items(folder)
    _one_line(error, folder / MODALITIES[1])
    nib.save(nib.Nifti1Image(np.zeros((240, 240, 150), np.float32), np.eye(4)), folder / MODALITIES[1])
    with pytest.raises(ValueError) as error:
        brats_datalist(folder.parent.parent)
    assert "(240, 240, 150) differs from" in _one_line(error, folder / MODALITIES[1])


def test_cli_reports_a_missing_modality_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _linked_patient(tmp_path, (MODALITIES[0], LABEL, BRAIN))
    code = cli_main(["train", "--bundle", str(BUNDLE), "--data", str(folder.parent.parent), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and str(folder / MODALITIES[1]) in err, err


def test_train_chain_gives_standardised_two_channel_slices_of_whole_tumour() -> None:
    item = brats_datalist(require(BRATS), [PATIENTS[0]])[0]
    samples = build_brats_train_transforms(num_samples=8, aug_prob=0.0, flip_axes=())(item)
    assert len(samples) == 8
    for sample in samples:
        image, label = torch.as_tensor(sample["image"]), torch.as_tensor(sample["label"])
        assert image.shape == (2, 144, 144) and label.shape == (1, 144, 144)
        assert set(label.unique().tolist()) <= {0.0, 1.0}
        # per-image standardisation, per channel; a slice with brain is never constant
        torch.testing.assert_close(image.mean(dim=(1, 2)), torch.zeros(2), atol=1e-4, rtol=0)
        torch.testing.assert_close(image.std(dim=(1, 2), unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    assert sum(bool(s["label"].any()) for s in samples) >= 4  # half centred on tumour
    augmented = build_brats_train_transforms(num_samples=4)(item)
    assert all(s["image"].shape == (2, 144, 144) and s["label"].shape == (1, 144, 144) for s in augmented)


def test_eval_chain_standardises_every_slice_and_keeps_the_label_grid() -> None:
    item = brats_datalist(require(BRATS), [PATIENTS[0]])[0]
    data = build_brats_eval_transforms()(item)
    image, label = data["image"], data["label"]
    assert image.shape == (2, 144, 144, 155) and label.shape == (1, 240, 240, 155)
    reference = np.asarray(nib.load(item["label"]).dataobj)
    np.testing.assert_array_equal(
        label[0].numpy(), (reference > 0).astype(np.float32)
    )  # file grid, label > 0
    brain_slice = image[..., 80]
    torch.testing.assert_close(brain_slice.mean(dim=(1, 2)).as_tensor(), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        brain_slice.std(dim=(1, 2), unbiased=False).as_tensor(), torch.ones(2), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_is_selectable_at_the_budget(variant: str) -> None:
    parser = load_workflow(BUNDLE, "train", network_name=variant, param_budget=500_000).parser
    network = parser.get_parsed_content("network_def")
    count = sum(p.numel() for p in network.parameters())
    # 0.5 M: widths are small integers, so the nearest lands within 14 % (NAS-reduction: +13 %)
    assert abs(count / 500_000 - 1) < 0.14, count
    x = torch.randn(2, 2, 32, 32)
    loss = parser.get_parsed_content("loss")(network(x), (torch.rand(2, 1, 32, 32) > 0.8).float())
    loss.backward()
    assert network(x).shape == (2, 1, 32, 32)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters())
    with torch.device("meta"):  # the paper's budget: no memory, no initialisation
        paper = load_workflow(BUNDLE, "train", network_name=variant).parser.get_parsed_content("network_def")
    assert abs(sum(p.numel() for p in paper.parameters()) / PAPER_BUDGET - 1) < 0.03


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_is_selectable(name: str) -> None:
    loss = load_workflow(BUNDLE, "train", loss_name=name).parser.get_parsed_content("loss")
    expected = {
        "dice": DiceLoss,
        "squared_dice": DiceLoss,
        "bce": DiceCELoss,
        "dice_ce": DiceCELoss,
        "focal_tversky": FocalTverskyLoss,
    }[name]
    assert type(loss) is expected
    logits = torch.randn(2, 1, 16, 16, requires_grad=True)
    target = (torch.rand(2, 1, 16, 16) > 0.7).float()
    value = loss(logits, target)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and logits.grad.abs().sum() > 0
    if name == "bce":
        torch.testing.assert_close(
            value, torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        )
    if name == "squared_dice":
        assert loss.squared_pred


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny epoch through `python -m monai.bundle run`, as a user types it."""
    root = tmp_path_factory.mktemp("brats_bundle")
    output = run_monai_bundle(
        CONFIGS / "train.json", {"dataset_dir": str(require(BRATS)), "bundle_root": str(root), **SMOKE}
    )
    return root, output


def test_one_epoch_through_monai_bundle_run(smoke_run: tuple[Path, str]) -> None:
    root, output = smoke_run
    assert "network modular_residual_unet" in output and "loss bce" in output
    assert f"holds out ['{PATIENTS[0]}'] | 1 training patients" in output
    assert "val_iou" in output and "val_dice" in output
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "model_best.pt").is_file()
    assert list((root / "runs").glob("events.out.tfevents.*"))


def test_whole_volume_inference_keeps_the_inputs_geometry(
    smoke_run: tuple[Path, str], tmp_path: Path
) -> None:
    root, _ = smoke_run
    patient = _patient("validation", "brats_2013_pat0003_1")
    settings = [arg for key, value in NETWORK.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(patient), "--output", str(tmp_path)]
    assert cli_main(args + ["--checkpoint", str(root / "models" / "model.pt")] + settings) == 0
    written = nib.load(tmp_path / "brats_2013_pat0003_1_seg.nii.gz")  # named after the patient
    source = nib.load(patient / MODALITIES[0])
    assert written.shape == source.shape == (240, 240, 155)
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(written.dataobj))) <= {0, 1}


def test_inverted_masks_land_on_the_label(tmp_path: Path) -> None:
    """Logits that mark the (cropped, reoriented) label go through inference.json's postprocessing and
    come back as the label file itself inside the centre crop, and background outside it."""
    parser = load_workflow(BUNDLE, "inference", output_dir=str(tmp_path)).parser
    folder = _patient("test", PATIENTS[0])
    # the label read through the image chain: the same orientation and crop, z-scored per slice, where
    # background (label 0) is each slice's minimum
    data = parser.get_parsed_content("preprocessing")({"image": [str(folder / LABEL)] * 2, "patient": "x"})
    label = data["image"][:1]
    data["pred"] = label - label.amin(dim=(1, 2), keepdim=True) - 1e-3  # > 0 exactly on tumour voxels
    parser.get_parsed_content("postprocessing")(data)
    written = np.asarray(nib.load(tmp_path / f"{PATIENTS[0]}_seg.nii.gz").dataobj)
    expected = np.zeros_like(written)
    expected[48:192, 48:192] = np.asarray(nib.load(folder / LABEL).dataobj)[48:192, 48:192] > 0
    assert expected.sum() > 10_000
    np.testing.assert_array_equal(written, expected)


def test_evaluate_writes_per_patient_metrics(smoke_run: tuple[Path, str]) -> None:
    root, _ = smoke_run
    overrides = {k: v for k, v in SMOKE.items() if not k.startswith("train#")}
    evaluation = run_workflow(BUNDLE, "evaluate", dataset_dir=str(BRATS), bundle_root=str(root), **overrides)
    metrics = evaluation.parser.get_parsed_content("validate#evaluator").state.metrics
    assert {"val_iou", "val_dice"} <= set(metrics) and 0.0 <= metrics["val_iou"] <= metrics["val_dice"] <= 1.0
    assert (root / "eval" / "pred" / f"{PATIENTS[0]}_seg.nii.gz").is_file()
    assert PATIENTS[0] in (root / "eval" / "val_iou_raw.csv").read_text()


def test_verify_net_in_out_and_torchscript_export(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = smoke_run
    common = {"meta_file": str(CONFIGS / "metadata.json"), "config_file": str(CONFIGS / "inference.json")}
    network = {"network_name": NETWORK["network_name"], "param_budget": NETWORK["param_budget"]}
    verify_net_in_out(net_id="network_def", n=3, **network, **common)
    assert_scripted_export_matches(BUNDLE, root / "models" / "model.pt", network, [(2, 2, 48, 48)], tmp_path)


def test_study_smoke_writes_json_table_and_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))  # bench scripts import their siblings
    spec = importlib.util.spec_from_file_location(
        "brats_variants_study", REPO_ROOT / "studies" / "brats_variants_study.py"
    )
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    assert study.run_list(study.VARIANTS, study.LOSSES)[:1] == [("modular_unet", "dice")]
    assert len(study.run_list(study.VARIANTS, study.LOSSES)) == 11  # 7 variants + 4 other losses
    settings = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    study.main(["--setting", "smoke", "--data", str(require(BRATS)), "--output", str(tmp_path), *settings])
    result = json.loads((tmp_path / "study.json").read_text())
    assert [(run["network"], run["loss"], run["fold"]) for run in result["runs"]] == [
        ("modular_unet", "dice", 0),
        ("modular_attention_unet", "dice", 0),
    ]
    for run in result["runs"]:
        assert run["held_out"] == [PATIENTS[0]] and 0.0 <= run["iou"][PATIENTS[0]] <= 1.0
        assert run["step_seconds"] > 0 and math.isclose(
            run["slices_per_second"], run["slices_per_step"] / run["step_seconds"], rel_tol=0.02
        )
    assert result["summary"][0]["relative_step_time"] == 1.0
    table = (tmp_path / "study.md").read_text()
    assert "IoU (mean ± std over patients)" in table and "modular_attention_unet" in table  # one fold
    # with two folds or more the spread is over folds (each fold: the mean of its patients)
    runs = [
        {**run, "fold": fold, "iou": {f"p{fold}": iou}, "dice": {f"p{fold}": 2 * iou / (1 + iou)}}
        for fold, iou in ((0, 0.5), (1, 0.7))
        for run in result["runs"]
    ]
    rows = study.summarise(runs)
    assert rows[0]["iou_per_fold"] == [0.5, 0.7]
    assert "IoU (mean ± std over folds)" in study.markdown(rows) and "0.600 ± 0.141" in study.markdown(rows)
    assert (tmp_path / "study.png").stat().st_size > 10_000
