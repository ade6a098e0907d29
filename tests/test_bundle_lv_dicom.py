"""The lv_dicom_unet2d bundle: the DICOM + PNG layout, the reader fixes, and runs through monai.bundle.

The fixture is written from real BraTS 2015 FLAIR slices (``tools/lv_fixture.py``); tests that
need it skip, naming the path, when ``../shared/data/brats2015-subset`` is absent.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_net_in_out
from monai.losses import DiceLoss
from monai.transforms import Compose, LoadImage
from PIL import Image
from pydicom.pixels import apply_modality_lut

from tests.conftest import REPO_ROOT, SHARED_DATA, assert_scripted_export_matches, require, run_monai_bundle
from tools.lv_fixture import ENCODINGS, build_lv_fixture
from unet_monai.bundle import load_workflow, run_workflow
from unet_monai.cli import main
from unet_monai.data.lv_layout import dicom_files, load_transforms, lv_datalist

BRATS = SHARED_DATA / "brats2015-subset"
LV_BUNDLE = REPO_ROOT / "bundles" / "lv_dicom_unet2d"
CONFIGS = LV_BUNDLE / "configs"
TINY_NETWORK = {"features": 4}
SLOPES = {encoding.name: encoding.slope for encoding in ENCODINGS}


@pytest.fixture(scope="module")
def lv_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 training and 4 test slices in the LV layout."""
    return build_lv_fixture(tmp_path_factory.mktemp("lv_fixture"), require(BRATS), num_train=10, num_test=4)


@pytest.fixture(scope="module")
def trained(lv_fixture: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One epoch of the bundle's default recipe (tiny network) run by ``python -m monai.bundle run``."""
    bundle_root = tmp_path_factory.mktemp("lv_bundle_root")
    overrides = {"dataset_dir": str(lv_fixture), "bundle_root": str(bundle_root), **TINY_NETWORK}
    return bundle_root, run_monai_bundle(CONFIGS / "train.json", {**overrides, "train#trainer#max_epochs": 1})


def _manifest(fixture: Path) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads((fixture / "fixture.json").read_text())["slices"]}


def _source_slices(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """The BraTS FLAIR slice and whole-tumour mask a fixture image was written from, indexed [i, j]."""
    folder = BRATS / row["source_split"] / row["patient"]
    z = row["slice_index"]
    flair = np.asarray(nib.load(folder / "Flair_subtrMeanDivStd.nii.gz").dataobj[:, :, z])
    tumour = np.asarray(nib.load(folder / "OTMultiClass.nii.gz").dataobj[:, :, z]) > 0
    return flair, tumour


def test_fixture_has_the_lv_layout_and_realistic_headers(lv_fixture: Path) -> None:
    training = sorted((lv_fixture / "training").glob("*.dcm"))
    test = sorted((lv_fixture / "test").glob("*.dcm"))
    assert len(training) == 10 and len(test) == 4
    assert all(path.with_suffix(".png").is_file() for path in training)
    assert all((lv_fixture / "test" / "GT" / f"{path.stem}.png").is_file() for path in test)
    assert not list((lv_fixture / "test").glob("*.png"))

    headers = [pydicom.dcmread(path) for path in training + test]
    assert {ds.Modality for ds in headers} == {"MR"}
    assert {ds.SOPClassUID for ds in headers} == {pydicom.uid.MRImageStorage}
    assert len({ds.SOPInstanceUID for ds in headers}) == len(headers)
    studies = {ds.PatientID: ds.StudyInstanceUID for ds in headers}
    assert len(set(studies.values())) == len(studies) == 6  # one study per patient, 6 patients
    assert all(len({d.SeriesInstanceUID for d in headers if d.PatientID == p}) == 1 for p in studies)
    assert {ds.PhotometricInterpretation for ds in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert {ds.pixel_array.dtype.name for ds in headers} == {"int16", "uint16"}
    assert all([float(v) for v in ds.PixelSpacing] == [1.0, 1.0] for ds in headers)
    assert all("RescaleSlope" in ds and "RescaleIntercept" in ds for ds in headers)
    train_patients = {ds.PatientID for ds in headers[: len(training)]}
    assert train_patients.isdisjoint(ds.PatientID for ds in headers[len(training) :])


def test_monai_pydicom_reader_applies_the_modality_lut_like_pydicom(lv_fixture: Path) -> None:
    for path in sorted(lv_fixture.glob("*/*.dcm")):
        ds = pydicom.dcmread(path)
        expected = apply_modality_lut(ds.pixel_array, ds).T  # MONAI indexes [column, row]
        loaded = LoadImage(reader="PydicomReader", image_only=True)(str(path))
        np.testing.assert_allclose(loaded.numpy(), expected, atol=1e-4, err_msg=str(path))


def test_loader_gives_the_source_pixels_and_mask_for_every_encoding(lv_fixture: Path) -> None:
    """MONOCHROME1 and rescaled files read back as the FLAIR values they were written from."""
    load = Compose(load_transforms("image", "label"))
    manifest = _manifest(lv_fixture)
    seen = set()
    for item in lv_datalist(lv_fixture, "training") + lv_datalist(lv_fixture, "test"):
        row = manifest[Path(item["image"]).stem]
        flair, tumour = _source_slices(row)
        data = load(item)
        assert data["image"].shape == data["label"].shape == (1, *flair.shape)
        np.testing.assert_allclose(data["image"][0].numpy(), flair, atol=SLOPES[row["encoding"]] / 2 + 1e-4)
        np.testing.assert_array_equal(data["label"][0].numpy(), tumour)
        if row["encoding"].endswith("monochrome1"):
            # What MONAI's reader alone gives: the grey scale upside down.
            raw = LoadImage(reader="PydicomReader", image_only=True)(item["image"]).numpy()
            assert np.corrcoef(raw.ravel(), flair.ravel())[0, 1] < -0.99
        seen.add(row["encoding"])
    assert seen == set(SLOPES)


def test_masks_stored_as_255_read_as_foreground(lv_fixture: Path, tmp_path: Path) -> None:
    item = lv_datalist(lv_fixture, "training")[0]
    mask = np.asarray(Image.open(item["label"]))
    Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L").save(tmp_path / "mask.png")
    label = Compose(load_transforms("image", "label"))({**item, "label": str(tmp_path / "mask.png")})["label"]
    assert set(np.unique(label.numpy())) == {0.0, 1.0}
    np.testing.assert_array_equal(label[0].numpy(), mask.T > 0)


def _broken_copy(fixture: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    dataset = tmp_path / "dataset"
    shutil.copytree(fixture / "training", dataset / "training")
    return dataset, sorted((dataset / "training").glob("*.dcm"))


def _one_line_error(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_corrupt_dicom_is_one_clear_error(lv_fixture: Path, tmp_path: Path) -> None:
    dataset, images = _broken_copy(lv_fixture, tmp_path)
    images[1].write_bytes(b"this is not a DICOM file\n" * 40)
    with pytest.raises(ValueError) as error:
        lv_datalist(dataset)
    assert "not a readable DICOM file" in _one_line_error(error, images[1])

    shutil.copy(lv_fixture / "training" / images[1].name, images[1])
    images[2].write_bytes(images[2].read_bytes()[:60000])  # pixel data cut short
    with pytest.raises(ValueError) as error:
        lv_datalist(dataset)
    assert "pixel data cannot be decoded" in _one_line_error(error, images[2])


def test_dicom_without_its_mask_is_one_clear_error(lv_fixture: Path, tmp_path: Path) -> None:
    dataset, images = _broken_copy(lv_fixture, tmp_path)
    images[3].with_suffix(".png").unlink()
    with pytest.raises(FileNotFoundError) as error:
        lv_datalist(dataset)
    message = _one_line_error(error, images[3])
    assert "no PNG mask" in message and str(images[3].with_suffix(".png")) in message


def test_mask_of_the_wrong_size_is_one_clear_error(lv_fixture: Path, tmp_path: Path) -> None:
    dataset, images = _broken_copy(lv_fixture, tmp_path)
    mask = images[4].with_suffix(".png")
    Image.open(mask).resize((120, 100)).save(mask)
    with pytest.raises(ValueError) as error:
        lv_datalist(dataset)
    assert "120x100" in _one_line_error(error, mask) and "240x240" in str(error.value)


def test_cli_prints_the_bad_file_in_one_line(
    lv_fixture: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset, images = _broken_copy(lv_fixture, tmp_path)
    images[0].with_suffix(".png").unlink()
    code = main(
        ["train", "--bundle", str(LV_BUNDLE), "--data", str(dataset), "--set", f"bundle_root={tmp_path}"]
    )
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error_lines[-1].startswith("error: ") and f"{images[0]}: no PNG mask" in error_lines[-1]


def test_one_epoch_through_monai_bundle_run(trained: tuple[Path, str]) -> None:
    bundle_root, output = trained
    assert "training on 8 images, validating on 2 images" in output
    assert "val_mean_dice" in output
    assert (bundle_root / "models" / "model.pt").is_file()
    assert list((bundle_root / "runs").glob("events.out.tfevents.*"))


def test_evaluate_writes_png_masks_whose_metrics_match_the_engine(
    lv_fixture: Path, trained: tuple[Path, str]
) -> None:
    """Whole-image evaluation: the report's per-image Dice (PNG files) equals the engine's Dice."""
    bundle_root, _ = trained
    workflow = run_workflow(
        LV_BUNDLE, "evaluate", dataset_dir=str(lv_fixture), bundle_root=str(bundle_root), whole_image=True,
        **TINY_NETWORK,
    )  # fmt: skip
    output_dir = Path(workflow.parser.get_parsed_content("output_dir"))
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["num_cases"] == 4
    assert {"dice", "iou", "precision", "recall"} <= set(summary["per_class"]["foreground"])
    assert set(summary["overlay_cases"]) == {"best", "median", "worst"}
    assert all((output_dir / f"overlay_{rank}.png").is_file() for rank in ("best", "median", "worst"))
    for pred in sorted((output_dir / "pred").glob("*_seg.png")):
        assert np.asarray(Image.open(pred)).shape == (240, 240)
        assert set(np.unique(np.asarray(Image.open(pred)))) <= {0, 1}
    with open(output_dir / "val_mean_dice_raw.csv") as f:
        engine = {Path(row["filename"]).stem: float(row["mean"]) for row in csv.DictReader(f)}
    report = {row["case"]: row["dice_foreground"] for row in summary["cases"]}
    assert report.keys() == engine.keys()
    for case, dice in report.items():  # every fixture slice holds tumour, so every Dice is defined
        assert dice == pytest.approx(engine[case], abs=1e-5), case


def _all_foreground_checkpoint(trained: tuple[Path, str], path: Path) -> Path:
    """The trained checkpoint with its 1x1 head giving a logit of +10 everywhere: all pixels foreground."""
    state = torch.load(trained[0] / "models" / "model.pt", map_location="cpu", weights_only=True)
    weights = state.get("model", state)
    weights["final_conv.weight"].zero_()
    weights["final_conv.bias"].fill_(10.0)
    torch.save(state, path)
    return path


def test_inference_writes_masks_on_the_input_grid(
    lv_fixture: Path, trained: tuple[Path, str], tmp_path: Path
) -> None:
    """`unet-monai infer`: one PNG per DICOM of the input's size; the recipe segments the centre 128x128 only.

    With a head that calls every pixel it sees foreground, the masks show exactly where the network
    looked: the centre crop put back on the 240x240 grid by ``Invertd``, or the whole image.
    """
    checkpoint = _all_foreground_checkpoint(trained, tmp_path / "all_foreground.pt")
    test_images = lv_fixture / "test"
    centre = np.zeros((240, 240), dtype=np.uint8)
    centre[56:184, 56:184] = 1
    for whole_image, expected in ((False, centre), (True, np.ones_like(centre))):
        output = tmp_path / f"whole_image_{whole_image}"
        files = ["--input", str(test_images), "--output", str(output), "--checkpoint", str(checkpoint)]
        settings = ["--set", "features=4", "--set", f"whole_image={str(whole_image).lower()}"]
        assert main(["infer", "--bundle", str(LV_BUNDLE), *files, *settings]) == 0
        masks = sorted(output.glob("*_seg.png"))
        assert [m.name for m in masks] == [f"{Path(p).stem}_seg.png" for p in dicom_files(test_images)]
        for path in masks:
            np.testing.assert_array_equal(np.asarray(Image.open(path)), expected, err_msg=str(path))


def test_improved_settings_layer_on_the_recipe() -> None:
    """improved.json sets only top-level values of train.json, so it layers on every config, inference too."""
    improved = json.loads((CONFIGS / "improved.json").read_text())
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    assert set(improved) <= set(train)
    assert {"whole_image", "mirror_axes", "features", "norm", "percentiles", "roi_size"} <= set(inference)

    recipe = load_workflow(LV_BUNDLE, "train").parser
    ours = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "improved.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
    ).parser
    names = {
        name: [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
        for name, parser in (("recipe", recipe), ("ours", ours))
    }
    assert "ResizeWithPadOrCropd" in names["recipe"] and "RandAffined" not in names["recipe"]
    # ours keeps the project's centre crop and adds augmentation
    assert "ResizeWithPadOrCropd" in names["ours"] and "RandAffined" in names["ours"]
    assert "RandCropByPosNegLabeld" not in names["ours"]
    whole = load_workflow(LV_BUNDLE, "train", whole_image=True).parser  # patches anywhere instead
    whole_names = [type(t).__name__ for t in whole.get_parsed_content("train#preprocessing").transforms]
    assert "RandCropByPosNegLabeld" in whole_names and "ResizeWithPadOrCropd" not in whole_names
    norms = {
        name: any(isinstance(m, torch.nn.BatchNorm2d) for m in parser.get_parsed_content("network").modules())
        for name, parser in (("recipe", recipe), ("ours", ours))
    }
    assert norms == {"recipe": False, "ours": True}
    assert recipe.get_parsed_content("optimizer").defaults["lr"] == 5e-4
    assert recipe.get_parsed_content("batch_size") == 4 and recipe.get_parsed_content("val_fraction") == 0.2
    # The recipe's loss is the soft Dice loss (DiceCELoss with a cross-entropy weight of 0); ours adds BCE.
    logits, target = torch.randn(4, 1, 16, 16), (torch.rand(4, 1, 16, 16) > 0.7).float()
    soft_dice = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=True)(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(recipe.get_parsed_content("loss")(logits, target), soft_dice)
    torch.testing.assert_close(ours.get_parsed_content("loss")(logits, target), soft_dice + bce)


def test_monai_bundle_checks_and_exports_the_network(trained: tuple[Path, str], tmp_path: Path) -> None:
    """verify_net_in_out and a scripted TorchScript ckpt_export, offline (check_properties:
    tests/test_bundle_contract.py).

    The export is scripted (``torch.jit.script``), not traced, so the TorchScript network takes any
    size divisible by 16, like the eager one.
    """
    bundle_root, _ = trained
    common = {
        "net_id": "network_def",
        "meta_file": str(CONFIGS / "metadata.json"),
        "config_file": str(CONFIGS / "inference.json"),
        "bundle_root": str(LV_BUNDLE),
        **TINY_NETWORK,
    }
    verify_net_in_out(**common)
    shapes = [(1, 1, 128, 128), (2, 1, 240, 240)]
    assert_scripted_export_matches(
        LV_BUNDLE, bundle_root / "models" / "model.pt", TINY_NETWORK, shapes, tmp_path
    )
