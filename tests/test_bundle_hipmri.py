"""The HipMRI slice layout (fixture builder, loader, bad input) and the hipmri_unet2d bundle."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_net_in_out

from tests.conftest import HIPPOCAMPUS, REPO_ROOT, assert_scripted_export_matches, require, run_monai_bundle
from tools.hipmri_fixture import build_hipmri_fixture, slice_affine
from unet_monai.bundle import load_workflow
from unet_monai.data.hipmri_layout import (
    SPLITS,
    hipmri_datalist,
    image_dir,
    mask_dir,
    mask_name,
    prediction_name_formatter,
)

BUNDLE = REPO_ROOT / "bundles" / "hipmri_unet2d"
CONFIGS = BUNDLE / "configs"
# A narrow network keeps the test trainings short; every other setting is the recipe's (256x256 resize).
FAST = {"max_epochs": 1, "val_interval": 1, "features": 4, "batch_size": 4}


def _write_slice(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _small_layout(root: Path, split: str = "train") -> tuple[Path, Path]:
    """Two synthetic image / mask pairs in the layout of one split."""
    rng = np.random.default_rng(0)
    for index in range(2):
        label = np.zeros((12, 10), dtype=np.uint8)
        label[3:7, 2:6] = index + 1
        _write_slice(
            image_dir(root, split) / f"case_00{index}_slice_3.nii.gz", rng.random((12, 10), np.float32)
        )
        _write_slice(mask_dir(root, split) / f"seg_00{index}_slice_3.nii.gz", label)
    return image_dir(root, split), mask_dir(root, split)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HipMRI layout built from 4 real hippocampus cases (2 train, 1 validate, 1 test)."""
    root = tmp_path_factory.mktemp("hipmri")
    build_hipmri_fixture(require(HIPPOCAMPUS), root, num_cases=(2, 1, 1), seed=1)
    return root


@pytest.fixture(scope="module")
def trained(fixture_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One short epoch of the recipe through `python -m monai.bundle run`; (bundle_root, its output)."""
    bundle_root = tmp_path_factory.mktemp("hipmri_bundle")
    output = run_monai_bundle(
        CONFIGS / "train.json",
        {"dataset_dir": str(fixture_root), "bundle_root": str(bundle_root), **FAST},
        timeout=900,
    )
    return bundle_root, output


def test_metadata_and_the_settings_ours_changes() -> None:
    """(Files, ids, and that ours.json only changes ids of train.json: tests/test_bundle_contract.py.)"""
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 1 and image["spatial_shape"] == [256, 256]
    assert pred["channel_def"] == {"0": "background", "1": "anterior", "2": "posterior"}
    # the settings ours.json changes that inference needs are there too.
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    assert {"resize_to", "roi_size", "intensity", "mirror_axes", "features", "norm"} <= set(inference)
    assert train["resize_to"] == [256, 256] and train["network_def"]["depth"] == 3


def test_recipe_network_is_a_three_level_ronneberger_unet() -> None:
    network = load_workflow(BUNDLE, "train").parser.get_parsed_content("network_def")
    assert type(network).__name__ == "RonnebergerUNet"
    assert network(torch.zeros(1, 1, 256, 256)).shape == (1, 3, 256, 256)
    pools = [m for m in network.modules() if isinstance(m, torch.nn.MaxPool2d)]
    ups = [m for m in network.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(pools) == 3 and len(ups) == 3


def test_ours_layers_on_the_recipe() -> None:
    """configs/ours.json on train.json: native size, z-score, batch-norm, Dice + CE, augmentation, TTA."""
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "ours.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
    )
    parser = workflow.parser
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert "Resized" not in names and "NormalizeIntensityd" in names and "RandAffined" in names
    network = parser.get_parsed_content("network_def")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    assert parser.get_parsed_content("loss").lambda_dice == 1.0
    assert type(parser.get_parsed_content("validate#inferer")).__name__ == "MirrorTTAInferer"
    recipe = load_workflow(BUNDLE, "train").parser
    assert type(recipe.get_parsed_content("validate#inferer")).__name__ == "SlidingWindowInferer"
    assert recipe.get_parsed_content("loss").lambda_dice == 0.0


def test_slice_affine_keeps_every_pixel_in_place() -> None:
    angle = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    affine[:3, :3] = affine[:3, :3] @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = [10, -4, 7]
    for axis in range(3):
        voxel = np.array([3.0, 5.0, 7.0, 1.0])
        in_plane = [a for a in range(3) if a != axis]
        pixel = np.array([voxel[in_plane[0]], voxel[in_plane[1]], 0.0, 1.0])
        np.testing.assert_allclose(slice_affine(affine, axis, int(voxel[axis])) @ pixel, affine @ voxel)


def test_fixture_is_real_data_split_by_case(fixture_root: Path) -> None:
    description = json.loads((fixture_root / "fixture.json").read_text())
    cases = [set(description[split]["cases"]) for split in SPLITS]
    assert all(len(c) == n for c, n in zip(cases, (2, 1, 1), strict=True))
    assert not (cases[0] & cases[1] or cases[0] & cases[2] or cases[1] & cases[2])
    for split in SPLITS:
        items = hipmri_datalist(fixture_root, split, num_classes=3)
        assert len(items) == description[split]["slices"] > 0
        ids = {Path(item["image"]).name.split("_")[1] for item in items}
        assert len(ids) == len(description[split]["cases"])  # slices of one case stay in one split
        assert all(Path(item["label"]).name == mask_name(Path(item["image"]).name) for item in items)
    # A slice holds the volume's own pixels, at the volume's world position.
    item = hipmri_datalist(fixture_root, "train")[0]
    case = "hippocampus_" + Path(item["image"]).name.split("_")[1]
    index = int(Path(item["image"]).name.split("_slice_")[1].split(".")[0])
    volume = nib.load(HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz")
    label = nib.load(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz")
    image_slice, mask_slice = nib.load(item["image"]), nib.load(item["label"])
    assert image_slice.ndim == 2
    np.testing.assert_array_equal(np.asarray(image_slice.dataobj), np.asarray(volume.dataobj)[:, :, index])
    np.testing.assert_array_equal(np.asarray(mask_slice.dataobj), np.asarray(label.dataobj)[:, :, index])
    np.testing.assert_allclose(image_slice.affine, slice_affine(volume.affine, 2, index))
    assert np.asarray(mask_slice.dataobj).any()  # only slices with foreground by default


def test_datalist_pairs_by_name(tmp_path: Path) -> None:
    images, masks = _small_layout(tmp_path)
    items = hipmri_datalist(tmp_path, "train", num_classes=3)
    assert [Path(i["image"]).name for i in items] == ["case_000_slice_3.nii.gz", "case_001_slice_3.nii.gz"]
    assert [Path(i["label"]).name for i in items] == ["seg_000_slice_3.nii.gz", "seg_001_slice_3.nii.gz"]
    assert all(Path(i["image"]).is_absolute() for i in items)
    # Masks named exactly like their images pair too.
    _write_slice(images / "other.nii.gz", np.zeros((12, 10), np.float32))
    _write_slice(masks / "other.nii.gz", np.zeros((12, 10), np.uint8))
    assert Path(hipmri_datalist(tmp_path, "train")[-1]["label"]).name == "other.nii.gz"


def test_image_without_mask_names_the_image(tmp_path: Path) -> None:
    images, masks = _small_layout(tmp_path)
    (masks / "seg_001_slice_3.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case_001_slice_3\.nii\.gz: image without a mask"):
        hipmri_datalist(tmp_path, "train")


def test_mask_without_image_names_the_mask(tmp_path: Path) -> None:
    images, masks = _small_layout(tmp_path)
    (images / "case_000_slice_3.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"seg_000_slice_3\.nii\.gz: mask without an image"):
        hipmri_datalist(tmp_path, "train")


def test_mask_of_the_wrong_size_names_the_mask(tmp_path: Path) -> None:
    images, masks = _small_layout(tmp_path)
    _write_slice(masks / "seg_001_slice_3.nii.gz", np.zeros((12, 11), np.uint8))
    with pytest.raises(
        ValueError, match=r"seg_001_slice_3\.nii\.gz: mask of shape \(12, 11\), but its image"
    ):
        hipmri_datalist(tmp_path, "train")


def test_label_values_outside_the_classes_name_the_mask(tmp_path: Path) -> None:
    images, masks = _small_layout(tmp_path)
    label = np.zeros((12, 10), np.uint8)
    label[0, 0], label[1, 1] = 2, 5
    _write_slice(masks / "seg_001_slice_3.nii.gz", label)
    assert len(hipmri_datalist(tmp_path, "train", num_classes=None)) == 2  # values unchecked
    with pytest.raises(
        ValueError, match=r"seg_001_slice_3\.nii\.gz: label values \[5\] outside the classes 0\.\.2"
    ):
        hipmri_datalist(tmp_path, "train", num_classes=3)
    _write_slice(masks / "seg_001_slice_3.nii.gz", np.full((12, 10), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"seg_001_slice_3\.nii\.gz: mask holds non-integer values"):
        hipmri_datalist(tmp_path, "train", num_classes=3)


def test_unreadable_or_3d_files_and_missing_folders(tmp_path: Path) -> None:
    images, masks = _small_layout(tmp_path)
    (images / "case_001_slice_3.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match=r"case_001_slice_3\.nii\.gz: not a readable NIfTI file"):
        hipmri_datalist(tmp_path, "train")
    _write_slice(images / "case_001_slice_3.nii.gz", np.zeros((12, 10, 4), np.float32))
    with pytest.raises(ValueError, match=r"case_001_slice_3\.nii\.gz: shape \(12, 10, 4\) is not a 2D slice"):
        hipmri_datalist(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="keras_slices_validate: no such folder"):
        hipmri_datalist(tmp_path, "validate")
    with pytest.raises(ValueError, match="split must be one of"):
        hipmri_datalist(tmp_path, "val")


def test_builder_refuses_to_mix_two_builds(tmp_path: Path) -> None:
    _small_layout(tmp_path, "test")
    with pytest.raises(FileExistsError, match="keras_slices_test"):
        build_hipmri_fixture(tmp_path / "no_source", tmp_path, num_cases=(1, 1, 1))


def test_prediction_names_pair_with_the_layout_masks() -> None:
    assert prediction_name_formatter({"filename_or_obj": "/d/case_004_slice_7.nii.gz"}, None)["subject"] == (
        "seg_004_slice_7"
    )
    assert prediction_name_formatter({"filename_or_obj": "/d/scan.nii"}, None)["subject"] == "scan_seg"


def test_one_epoch_of_the_recipe_via_monai_bundle_run(trained: tuple[Path, str]) -> None:
    bundle_root, output = trained
    assert (bundle_root / "models" / "model.pt").is_file()
    assert "val_mean_dice" in output and "val_dice_posterior" in output
    assert list((bundle_root / "runs").glob("events.out.tfevents.*")), "no TensorBoard log written"


def test_inference_writes_masks_with_the_input_geometry(
    fixture_root: Path, trained: tuple[Path, str], tmp_path: Path
) -> None:
    """`unet-monai infer` on test slices (one with an oblique, anisotropic affine), then evaluate by name."""
    from unet_monai.cli import main
    from unet_monai.evaluate import evaluate_folders

    bundle_root, _ = trained
    test_items = hipmri_datalist(fixture_root, "test")[:3]
    inputs, labels = tmp_path / "images", tmp_path / "labels"
    for item in test_items:
        for key, folder in (("image", inputs), ("label", labels)):
            source = nib.load(item[key])
            _write_slice(folder / Path(item[key]).name, np.asarray(source.dataobj), source.affine)
    oblique = np.array([[0.0, -1.3, 0.2, 40.0], [0.9, 0.0, 0.0, -12.0], [0.0, 0.1, 2.0, 5.5], [0, 0, 0, 1]])
    image = nib.load(test_items[0]["image"])
    _write_slice(inputs / "case_999_slice_0.nii.gz", np.asarray(image.dataobj), oblique)

    masks = tmp_path / "masks"
    code = main(
        ["infer", "--bundle", str(BUNDLE), "--input", str(inputs), "--output", str(masks)]
        + ["--checkpoint", str(bundle_root / "models" / "model.pt"), "--set", "features=4"]
    )
    assert code == 0
    for source in sorted(inputs.iterdir()):
        written = nib.load(masks / mask_name(source.name))
        expected = nib.load(source)
        assert written.shape == expected.shape
        np.testing.assert_allclose(written.affine, expected.affine, atol=1e-5)
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    summary = evaluate_folders(masks, labels, tmp_path / "report", num_classes=3)
    assert summary["num_cases"] == len(test_items)


def test_evaluate_config_reports_the_test_split(fixture_root: Path, trained: tuple[Path, str]) -> None:
    bundle_root, _ = trained
    workflow = load_workflow(
        BUNDLE, "evaluate", dataset_dir=str(fixture_root), bundle_root=str(bundle_root), features=4
    )
    workflow.initialize()
    workflow.run()
    summary = json.loads((bundle_root / "eval" / "summary.json").read_text())
    test_masks = hipmri_datalist(fixture_root, "test")
    assert summary["num_cases"] == len(test_masks)
    assert summary["classes"] == ["anterior", "posterior"]
    predictions = sorted(p.name for p in (bundle_root / "eval" / "pred").iterdir())
    assert predictions == sorted(Path(item["label"]).name for item in test_masks)


def test_verify_net_in_out_and_torchscript_export(trained: tuple[Path, str], tmp_path: Path) -> None:
    bundle_root, _ = trained
    common = {
        "net_id": "network_def",
        "meta_file": str(CONFIGS / "metadata.json"),
        "config_file": str(CONFIGS / "inference.json"),
        "bundle_root": str(BUNDLE),
        "features": 4,
    }
    verify_net_in_out(**common)
    # Scripted (not traced), so the exported network takes any size divisible by 2**depth.
    shapes = [(1, 1, 256, 256), (2, 1, 48, 64)]
    assert_scripted_export_matches(
        BUNDLE, bundle_root / "models" / "model.pt", {"features": 4}, shapes, tmp_path
    )
