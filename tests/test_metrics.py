"""Tests of unet_monai.metrics and unet_monai.evaluate against values counted by hand."""

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from unet_monai.evaluate import evaluate_folders
from unet_monai.metrics import case_metrics

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HIPPOCAMPUS_LABEL = DATA_DIR / "msd-hippocampus" / "labelsTr" / "hippocampus_001.nii.gz"

# Reference: class 1 has 4 voxels, class 2 has 4 voxels.
LABEL = np.array(
    [
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 2, 2],
        [0, 0, 2, 2],
    ]
)
# Prediction: class 1 has 4 voxels (3 overlap the reference), class 2 has 5 voxels (4 overlap).
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 1, 0, 0],
        [0, 0, 2, 2],
        [0, 2, 2, 2],
    ]
)
DICE_1 = 2 * 3 / (4 + 4)
IOU_1 = 3 / (4 + 4 - 3)
DICE_2 = 2 * 4 / (5 + 4)
IOU_2 = 4 / (5 + 4 - 4)

# A non-identity affine: 0.5 x 0.8 x 2.0 mm voxels, shifted origin.
AFFINE = np.array(
    [
        [0.5, 0.0, 0.0, -10.0],
        [0.0, 0.8, 0.0, 20.0],
        [0.0, 0.0, 2.0, 5.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _to_3d(label_map: np.ndarray) -> np.ndarray:
    """Stack a 4x4 map into a 4x4x2 volume (every count doubles, the fractions stay the same)."""
    return np.stack([label_map, label_map], axis=-1)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))


def _make_folders(tmp_path: Path, pred_postfix: str = "_seg") -> tuple[Path, Path]:
    """Two cases: 'a' (PRED vs LABEL) and 'b' (perfect class 1, class 2 absent from both)."""
    label_dir = tmp_path / "labels"
    pred_dir = tmp_path / "preds"
    label_dir.mkdir()
    pred_dir.mkdir()
    case_b = np.zeros((4, 4), dtype=np.uint8)
    case_b[1:3, 1:3] = 1
    _write_nifti(label_dir / "a.nii.gz", _to_3d(LABEL))
    _write_nifti(pred_dir / f"a{pred_postfix}.nii.gz", _to_3d(PRED))
    _write_nifti(label_dir / "b.nii.gz", _to_3d(case_b))
    _write_nifti(pred_dir / "b.nii.gz", _to_3d(case_b))
    return pred_dir, label_dir


def test_case_metrics_hand_counted() -> None:
    result = case_metrics(PRED, LABEL, num_classes=3)
    assert result["dice"] == pytest.approx([DICE_1, DICE_2])
    assert result["iou"] == pytest.approx([IOU_1, IOU_2])


def test_case_metrics_torch_and_channel_dim() -> None:
    result = case_metrics(torch.from_numpy(PRED)[None], torch.from_numpy(LABEL), num_classes=3)
    assert result["dice"] == pytest.approx([DICE_1, DICE_2])
    assert result["iou"] == pytest.approx([IOU_1, IOU_2])


def test_empty_reference_class_is_nan() -> None:
    # Class 3 is absent from the reference: NaN whether the prediction is empty or not (MONAI ignore_empty).
    pred_with_fp = PRED.copy()
    pred_with_fp[0, 0] = 3
    for pred in (PRED, pred_with_fp):
        result = case_metrics(pred, LABEL, num_classes=4)
        assert math.isnan(result["dice"][2]) and math.isnan(result["iou"][2])
        assert result["dice"][:2] == pytest.approx([DICE_1, DICE_2])
    # Class present in the reference but missing from the prediction: 0.
    result = case_metrics(np.zeros_like(LABEL), LABEL, num_classes=3)
    assert result["dice"] == [0.0, 0.0] and result["iou"] == [0.0, 0.0]


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(PRED[:, :3], LABEL, num_classes=3)


def test_out_of_range_labels_raise() -> None:
    label = LABEL.copy()
    label[0, 0] = 5
    with pytest.raises(ValueError, match=r"Reference contains values outside the labels 0\.\.2: \[5\]"):
        case_metrics(PRED, label, num_classes=3)
    with pytest.raises(ValueError, match=r"Prediction contains .*\[-1\]"):
        case_metrics(PRED - 1, LABEL, num_classes=3)


def test_evaluate_folders_hand_counted(tmp_path: Path) -> None:
    pred_dir, label_dir = _make_folders(tmp_path)
    summary = evaluate_folders(pred_dir, label_dir, tmp_path / "out")

    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == [
        "case",
        "dice_class_1",
        "iou_class_1",
        "dice_class_2",
        "iou_class_2",
        "dice_mean",
        "iou_mean",
    ]
    assert [row["case"] for row in rows] == ["a", "b"]
    assert float(rows[0]["dice_class_1"]) == pytest.approx(DICE_1)
    assert float(rows[0]["iou_class_2"]) == pytest.approx(IOU_2)
    assert float(rows[0]["dice_mean"]) == pytest.approx((DICE_1 + DICE_2) / 2)
    assert float(rows[1]["dice_class_1"]) == 1.0
    assert math.isnan(float(rows[1]["dice_class_2"]))
    assert float(rows[1]["dice_mean"]) == 1.0  # nanmean skips the empty class 2

    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["num_cases"] == 2
    assert written["classes"] == ["class_1", "class_2"]
    assert written["cases"][1]["dice_class_2"] is None  # NaN -> null
    class_1 = written["per_class"]["class_1"]
    assert class_1["dice"]["mean"] == pytest.approx((DICE_1 + 1.0) / 2)
    assert class_1["dice"]["std"] == pytest.approx((1.0 - DICE_1) / 2)
    assert class_1["iou"]["mean"] == pytest.approx((IOU_1 + 1.0) / 2)
    assert written["per_class"]["class_2"]["dice"]["mean"] == pytest.approx(DICE_2)  # case b is NaN
    assert written["mean"]["dice"] == pytest.approx(((DICE_1 + 1.0) / 2 + DICE_2) / 2)
    assert written["mean"]["iou"] == pytest.approx(((IOU_1 + 1.0) / 2 + IOU_2) / 2)
    assert summary["mean"]["dice"] == pytest.approx(written["mean"]["dice"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "summary.json"]


@pytest.mark.parametrize("postfix", ["", "_seg", "_pred"])
def test_prediction_postfixes_and_class_names(tmp_path: Path, postfix: str) -> None:
    pred_dir, label_dir = _make_folders(tmp_path, pred_postfix=postfix)
    summary = evaluate_folders(pred_dir, label_dir, tmp_path / "out", class_names=["left", "right"])
    assert summary["classes"] == ["left", "right"]
    assert summary["cases"][0]["dice_left"] == pytest.approx(DICE_1)
    assert summary["cases"][0]["iou_right"] == pytest.approx(IOU_2)


def test_missing_prediction_raises(tmp_path: Path) -> None:
    pred_dir, label_dir = _make_folders(tmp_path)
    (pred_dir / "b.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"for 1 case\(s\): b "):
        evaluate_folders(pred_dir, label_dir, tmp_path / "out")


def test_affine_mismatch_raises(tmp_path: Path) -> None:
    pred_dir, label_dir = _make_folders(tmp_path)
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    _write_nifti(pred_dir / "b.nii.gz", _to_3d(LABEL), affine=shifted)
    with pytest.raises(ValueError, match="Affine mismatch.*b.nii.gz"):
        evaluate_folders(pred_dir, label_dir, tmp_path / "out")


def test_shape_mismatch_in_folders_raises(tmp_path: Path) -> None:
    pred_dir, label_dir = _make_folders(tmp_path)
    _write_nifti(pred_dir / "b.nii.gz", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"Shape mismatch.*\(4, 4, 3\).*\(4, 4, 2\)"):
        evaluate_folders(pred_dir, label_dir, tmp_path / "out")


@pytest.mark.skipif(not HIPPOCAMPUS_LABEL.is_file(), reason=f"real data not found: {HIPPOCAMPUS_LABEL}")
def test_real_hippocampus_label(tmp_path: Path) -> None:
    label_dir = tmp_path / "labels"
    same_dir = tmp_path / "same"
    no_class_2_dir = tmp_path / "no_class_2"
    for folder in (label_dir, same_dir, no_class_2_dir):
        folder.mkdir()
    shutil.copy(HIPPOCAMPUS_LABEL, label_dir / "hippocampus_001.nii.gz")
    shutil.copy(HIPPOCAMPUS_LABEL, same_dir / "hippocampus_001_seg.nii.gz")
    image = nib.load(str(HIPPOCAMPUS_LABEL))
    data = np.asarray(image.dataobj).copy()
    data[data == 2] = 0
    nib.save(
        nib.Nifti1Image(data, image.affine, image.header), str(no_class_2_dir / "hippocampus_001.nii.gz")
    )

    same = evaluate_folders(same_dir, label_dir, tmp_path / "out_same")
    assert same["classes"] == ["class_1", "class_2"]  # num_classes inferred from the labels 0, 1, 2
    assert same["cases"][0]["dice_class_1"] == pytest.approx(1.0)
    assert same["cases"][0]["dice_class_2"] == pytest.approx(1.0)
    assert same["cases"][0]["iou_class_1"] == pytest.approx(1.0)
    assert same["cases"][0]["iou_class_2"] == pytest.approx(1.0)

    no_class_2 = evaluate_folders(no_class_2_dir, label_dir, tmp_path / "out_no_class_2")
    assert no_class_2["cases"][0]["dice_class_1"] == pytest.approx(1.0)
    assert no_class_2["cases"][0]["dice_class_2"] == 0.0
    assert no_class_2["cases"][0]["iou_class_2"] == 0.0
