"""The evaluation report: overlay figures, training curves, the CLI options and the bundle's evaluate.json."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from tests.conftest import AXIAL_ONLY, HIPPOCAMPUS, HIPPOCAMPUS_BUNDLE, SHARED_DATA, require
from unet_monai.bundle import load_workflow
from unet_monai.cli import main
from unet_monai.data import case_name
from unet_monai.evaluate import evaluate_folders
from unet_monai.report import save_case_figure, save_training_curves

CLASS_NAMES = ["anterior", "posterior"]
OVERLAYS = ("overlay_best", "overlay_median", "overlay_worst")
# Predictions of decreasing quality, made from the reference labels.
CASES = {
    "hippocampus_001": "same",
    "hippocampus_003": "shifted",
    "hippocampus_004": "no_posterior",
}


def _assert_png(path: Path, min_width: int, min_height: int) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as picture:
        assert picture.width >= min_width and picture.height >= min_height, (path, picture.size)


def _write_predictions(label_dir: Path, pred_dir: Path) -> None:
    """``<case>_seg.nii.gz`` for each case of CASES, on its reference's grid."""
    pred_dir.mkdir(parents=True, exist_ok=True)
    for case, kind in CASES.items():
        reference = nib.load(str(label_dir / f"{case}.nii.gz"))
        data = np.asarray(reference.dataobj).astype(np.uint8)
        if kind == "shifted":
            data = np.roll(data, 1, axis=0)
        elif kind == "no_posterior":
            data[data == 2] = 0
        nib.save(nib.Nifti1Image(data, reference.affine), str(pred_dir / f"{case}_seg.nii.gz"))


def _write_training_log(log_dir: Path, epochs: int = 4, iterations_per_epoch: int = 10) -> None:
    """A TensorBoard log with the bundle's tags: train_loss per iteration, val Dice per epoch."""
    writer = SummaryWriter(log_dir=str(log_dir))
    for iteration in range(1, epochs * iterations_per_epoch + 1):
        writer.add_scalar("train_loss", 2.0 / iteration**0.5, iteration)
    for epoch in range(1, epochs + 1):
        writer.add_scalar("val_dice_anterior", 0.5 + 0.1 * epoch, epoch)
        writer.add_scalar("val_dice_posterior", 0.4 + 0.1 * epoch, epoch)
        writer.add_scalar("val_mean_dice", 0.45 + 0.1 * epoch, epoch)
    writer.close()


def test_report_on_real_hippocampus(tmp_path: Path) -> None:
    label_dir = require(HIPPOCAMPUS) / "labelsTr"
    _write_predictions(label_dir, tmp_path / "pred")
    _write_training_log(tmp_path / "runs")

    summary = evaluate_folders(
        tmp_path / "pred",
        label_dir,
        tmp_path / "out",
        class_names=CLASS_NAMES,
        cases=list(CASES),
        images=HIPPOCAMPUS / "imagesTr",
        log_dir=tmp_path / "runs",
    )

    assert set(summary["figures"]) == {*OVERLAYS, "training_curves"}
    for name in OVERLAYS:
        assert summary["figures"][name] == str(tmp_path / "out" / f"{name}.png")
        _assert_png(tmp_path / "out" / f"{name}.png", min_width=600, min_height=250)
    _assert_png(tmp_path / "out" / "training_curves.png", min_width=800, min_height=300)

    mean_dice = {row["case"]: row["dice_mean"] for row in summary["cases"]}
    assert summary["overlay_cases"] == {
        "best": max(mean_dice, key=mean_dice.get),
        "median": "hippocampus_003",
        "worst": min(mean_dice, key=mean_dice.get),
    }
    assert summary["overlay_cases"]["worst"] == "hippocampus_004"  # posterior missed: mean Dice 0.5
    assert summary["overlay_cases"]["best"] == "hippocampus_001"

    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["figures"] == summary["figures"]
    assert written["overlay_cases"] == summary["overlay_cases"]
    for metric in ("dice", "iou", "precision", "recall", "hd95"):
        assert set(written["per_class"]["anterior"][metric]) == {"mean", "std", "median"}
        assert set(written["case_mean"][metric]) == {"mean", "std", "median"}
    assert written["cases"][2]["hd95_posterior"] is None  # missed class: NaN -> null
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "hd95_anterior" in header and "precision_mean" in header


def test_missing_image_fails_before_any_output(tmp_path: Path) -> None:
    label_dir = require(HIPPOCAMPUS) / "labelsTr"
    _write_predictions(label_dir, tmp_path / "pred")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001.nii.gz", images)
    with pytest.raises(FileNotFoundError, match=r"No image in .* for 2 case\(s\): hippocampus_003"):
        evaluate_folders(tmp_path / "pred", label_dir, tmp_path / "out", cases=list(CASES), images=images)
    assert not (tmp_path / "out").exists()


def test_no_event_files_no_training_curves(tmp_path: Path) -> None:
    assert save_training_curves(tmp_path / "missing", tmp_path / "curves.png") is None
    (tmp_path / "empty").mkdir()
    assert save_training_curves(tmp_path / "empty", tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_case_figure_of_2d_and_anisotropic_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 30)).astype(np.float32)
    reference = np.zeros((20, 30), dtype=np.uint8)
    reference[5:10, 5:20] = 1
    reference[10:15, 5:20] = 2
    path = save_case_figure(
        image, reference, reference, tmp_path / "a.png", "2D", CLASS_NAMES, spacing=(0.5, 2.0)
    )
    _assert_png(path, min_width=600, min_height=250)
    with pytest.raises(ValueError, match="shapes differ"):
        save_case_figure(image, reference[:, :5], reference, tmp_path / "b.png", "bad", CLASS_NAMES)


def test_cli_evaluate_with_images_and_log_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = require(HIPPOCAMPUS) / "labelsTr"
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    for case in CASES:
        shutil.copy(source / f"{case}.nii.gz", label_dir)
    _write_predictions(label_dir, tmp_path / "pred")
    _write_training_log(tmp_path / "runs")
    out = tmp_path / "report"
    code = main(
        ["evaluate", "--pred", str(tmp_path / "pred"), "--label", str(label_dir), "--output", str(out),
         "--class-names", *CLASS_NAMES, "--images", str(HIPPOCAMPUS / "imagesTr"),
         "--log-dir", str(tmp_path / "runs")]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"overlay_worst: {out / 'overlay_worst.png'} (hippocampus_004)" in printed
    assert f"training_curves: {out / 'training_curves.png'}" in printed
    for name in (*OVERLAYS, "training_curves"):
        assert (out / f"{name}.png").is_file()

    # --log-dir without event files: the report says so instead of failing.
    (tmp_path / "no_runs").mkdir()
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--label", str(label_dir), "--output", str(out)]
    assert main([*args, "--log-dir", str(tmp_path / "no_runs")]) == 0
    assert "no training curves" in capsys.readouterr().out


def test_cli_evaluate_help_explains_the_figures(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "--images DIR" in text and "overlay_worst.png" in text
    assert "--log-dir DIR" in text and "training_curves.png" in text


def test_bundle_evaluate_writes_the_full_report(
    tmp_path: Path, trained_checkpoint: Path, synthetic_dataset: Path
) -> None:
    workflow = load_workflow(
        HIPPOCAMPUS_BUNDLE,
        "evaluate",
        dataset_dir=str(synthetic_dataset),
        ckpt_dir=str(trained_checkpoint.parent),
        output_dir=str(tmp_path),
        train_log_dir=str(trained_checkpoint.parent / "runs"),
        **{"network_def#features": 8},
        **AXIAL_ONLY,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()

    validation = workflow.parser.get_parsed_content("split")[1]
    assert len(validation) == 1
    predictions = sorted((tmp_path / "pred").glob("*.nii.gz"))
    assert [p.name for p in predictions] == [f"{case_name(item['image'])}_seg.nii.gz" for item in validation]
    for item, prediction in zip(validation, predictions, strict=True):
        source = nib.load(item["image"])
        mask = nib.load(str(prediction))
        assert mask.shape == source.shape
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
        assert mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_cases"] == 1 and summary["classes"] == ["anterior", "posterior"]
    assert summary["cases"][0]["case"] == case_name(validation[0]["label"])
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[0].startswith("case,dice_anterior")
    for name in (*OVERLAYS, "training_curves"):
        _assert_png(tmp_path / f"{name}.png", min_width=600, min_height=250)
    # MetricsSaver's per-case files are still there, and the in-engine Dice (RAS grid) is the report's Dice
    # (source grid): the saved masks lost nothing, and the engine compared prediction and label alike.
    assert (tmp_path / "val_mean_iou_summary.csv").is_file()
    with open(tmp_path / "val_mean_dice_raw.csv", newline="") as f:
        engine = next(csv.DictReader(f))
    assert case_name(engine["filename"]) == summary["cases"][0]["case"]
    report = summary["cases"][0]
    assert [report["dice_anterior"], report["dice_posterior"]] == pytest.approx(
        [float(engine["class0"]), float(engine["class1"])], abs=1e-5
    )


def test_training_curves_read_both_event_files_of_a_bundle_training(trained_checkpoint: Path) -> None:
    """Trainer and evaluator write separate event files: the curves need both (loss and Dice)."""
    from unet_monai.report import read_scalars

    runs = trained_checkpoint.parent / "runs"
    assert len(list(runs.glob("events.out.tfevents.*"))) >= 2
    scalars = read_scalars(runs)
    assert {"train_loss", "val_mean_dice", "val_dice_anterior", "val_dice_posterior"} <= set(scalars)
    assert scalars["val_mean_dice"][0].tolist() == [1]  # one epoch, one validation


def test_evaluate_binary_png_predictions_against_real_tiff_masks(tmp_path: Path) -> None:
    """2D masks saved as 0 / 255 (LGG TIFF references, PNG predictions) with RGB images for the overlays."""
    patient = require(SHARED_DATA / "lgg-kaggle3m-subset" / "kaggle_3m") / "TCGA_CS_4941_19960909"
    masks = sorted(patient.glob("*_mask.tif"))
    with_tumour = [m for m in masks if np.asarray(Image.open(m)).any()][:3]
    assert len(with_tumour) == 3
    label_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    label_dir.mkdir()
    pred_dir.mkdir()
    images, expected = {}, {}
    for shift, mask_path in enumerate(with_tumour):
        case = mask_path.name.removesuffix("_mask.tif")
        reference = np.asarray(Image.open(mask_path)) > 0
        prediction = np.roll(reference, 3 * shift, axis=0)
        shutil.copy(mask_path, label_dir / f"{case}.tif")
        Image.fromarray((prediction * 255).astype(np.uint8)).save(pred_dir / f"{case}_seg.png")
        images[case] = patient / f"{case}.tif"
        expected[case] = 2 * (prediction & reference).sum() / (prediction.sum() + reference.sum())

    summary = evaluate_folders(pred_dir, label_dir, tmp_path / "report", images=images, binary=True)

    assert summary["num_cases"] == 3 and summary["classes"] == ["class_1"]
    for row in summary["cases"]:
        assert row["dice_class_1"] == pytest.approx(expected[row["case"]], abs=1e-6)
    assert expected[summary["overlay_cases"]["best"]] == max(expected.values())
    for name in OVERLAYS:
        _assert_png(Path(summary["figures"][name]), 400, 150)
    with pytest.raises(ValueError, match="outside"):
        evaluate_folders(pred_dir, label_dir, tmp_path / "plain", num_classes=2)
