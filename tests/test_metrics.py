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
    metrics = ["dice", "iou", "precision", "recall", "hd95"]
    assert list(rows[0].keys()) == [
        "case",
        *[f"{metric}_class_1" for metric in metrics],
        *[f"{metric}_class_2" for metric in metrics],
        *[f"{metric}_mean" for metric in metrics],
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


# --- precision, recall, HD95 and the empty-mask conventions -------------------------------------------

PRECISION = [3 / 4, 4 / 5]  # class 1: TP 3, FP 1; class 2: TP 4, FP 1
RECALL = [3 / 4, 4 / 4]  # class 1: TP 3, FN 1; class 2: TP 4, FN 0
SPACING = (0.5, 1.5, 3.0)  # mm per voxel axis


def test_precision_recall_hand_counted() -> None:
    result = case_metrics(PRED, LABEL, num_classes=3)
    assert result["precision"] == pytest.approx(PRECISION)
    assert result["recall"] == pytest.approx(RECALL)
    result_3d = case_metrics(_to_3d(PRED), _to_3d(LABEL), num_classes=3, spacing=SPACING)
    assert result_3d["precision"] == pytest.approx(PRECISION)  # spacing does not change overlap metrics


@pytest.mark.parametrize(
    ("offset", "expected_mm"),
    [
        ((1, 0, 0), 0.5),
        ((0, 1, 0), 1.5),
        ((0, 0, 1), 3.0),
        ((1, 0, 1), math.hypot(0.5, 3.0)),
    ],
)
def test_hd95_single_voxels_anisotropic(offset: tuple[int, int, int], expected_mm: float) -> None:
    label = np.zeros((5, 5, 5), dtype=np.uint8)
    pred = np.zeros_like(label)
    label[2, 2, 2] = 1
    pred[2 + offset[0], 2 + offset[1], 2 + offset[2]] = 1
    result = case_metrics(pred, label, num_classes=2, spacing=SPACING)
    assert result["hd95"] == pytest.approx([expected_mm])
    assert case_metrics(pred, label, num_classes=2)["hd95"] == pytest.approx([math.dist(offset, (0, 0, 0))])


def test_hd95_ignores_one_outlier_voxel() -> None:
    # A 4x4x4 cube has 56 surface voxels; one stray voxel is under 5 % of the prediction's 57 surface
    # voxels, so the 95th percentile of the distances stays 0 (the plain Hausdorff distance would be ~7).
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[2:6, 2:6, 2:6] = 1
    pred = label.copy()
    pred[9, 9, 9] = 1
    result = case_metrics(pred, label, num_classes=2)
    assert result["hd95"] == [0.0]
    assert result["precision"] == pytest.approx([64 / 65])
    assert result["recall"] == [1.0]


def test_empty_mask_conventions() -> None:
    # class 1 in both, class 2 only in the reference, class 3 only in the prediction, class 4 in neither.
    label = np.zeros((6, 6), dtype=np.uint8)
    pred = np.zeros_like(label)
    label[0:2, 0:2] = 1
    pred[0:2, 0:2] = 1
    label[3:5, 0:2] = 2
    pred[3:5, 3:5] = 3
    result = case_metrics(pred, label, num_classes=5)
    nan = math.nan
    expected = {
        "dice": [1.0, 0.0, nan, nan],
        "iou": [1.0, 0.0, nan, nan],
        "precision": [1.0, nan, 0.0, nan],
        "recall": [1.0, 0.0, nan, nan],
        "hd95": [0.0, nan, nan, nan],
    }
    assert list(result) == list(expected)
    for metric, values in expected.items():
        np.testing.assert_equal(np.array(result[metric]), np.array(values), err_msg=metric)


def test_spacing_must_match_dimensions() -> None:
    with pytest.raises(ValueError, match=r"3 spacing values .* 2D label map"):
        case_metrics(PRED, LABEL, num_classes=3, spacing=(1.0, 1.0, 1.0))


def _shift(volume: np.ndarray, axis: int) -> np.ndarray:
    """``volume`` moved one voxel up along ``axis`` (the label must not touch the last slice)."""
    assert not np.take(volume, -1, axis=axis).any()
    shifted = np.zeros_like(volume)
    target = [slice(None)] * volume.ndim
    source = [slice(None)] * volume.ndim
    target[axis] = slice(1, None)
    source[axis] = slice(None, -1)
    shifted[tuple(target)] = volume[tuple(source)]
    return shifted


@pytest.mark.skipif(not HIPPOCAMPUS_LABEL.is_file(), reason=f"real data not found: {HIPPOCAMPUS_LABEL}")
def test_real_hippocampus_hd95_and_cases(tmp_path: Path) -> None:
    """Only the named cases of the 203-case label folder; a label vs itself and vs a one-voxel shift."""
    label_dir = HIPPOCAMPUS_LABEL.parent
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    shift_axes = {"hippocampus_001": None, "hippocampus_003": 0, "hippocampus_004": 2}
    for case, axis in shift_axes.items():
        image = nib.load(str(label_dir / f"{case}.nii.gz"))
        data = np.asarray(image.dataobj).astype(np.uint8)
        np.testing.assert_allclose(image.header.get_zooms(), (1.0, 1.0, 1.0))  # 1 mm isotropic
        pred = data if axis is None else _shift(data, axis)
        nib.save(nib.Nifti1Image(pred, image.affine, image.header), str(pred_dir / f"{case}_seg.nii.gz"))

    summary = evaluate_folders(pred_dir, label_dir, tmp_path / "out", cases=list(shift_axes))
    rows = {row["case"]: row for row in summary["cases"]}
    assert list(rows) == list(shift_axes)  # the other 200 labels are left alone
    same = rows["hippocampus_001"]
    for name in ("class_1", "class_2"):
        assert same[f"dice_{name}"] == pytest.approx(1.0)
        assert same[f"hd95_{name}"] == 0.0
        for case in ("hippocampus_003", "hippocampus_004"):
            assert rows[case][f"hd95_{name}"] == pytest.approx(1.0)
            assert rows[case][f"dice_{name}"] < 0.95
    hd95 = summary["per_class"]["class_1"]["hd95"]
    assert hd95["mean"] == pytest.approx(2 / 3) and hd95["median"] == pytest.approx(1.0)
    assert summary["case_mean"]["hd95"]["median"] == pytest.approx(1.0)

    with pytest.raises(FileNotFoundError, match="hippocampus_999"):
        evaluate_folders(pred_dir, label_dir, tmp_path / "out", cases=["hippocampus_001", "hippocampus_999"])


@pytest.mark.skipif(not HIPPOCAMPUS_LABEL.is_file(), reason=f"real data not found: {HIPPOCAMPUS_LABEL}")
def test_real_hippocampus_hd95_uses_the_affine_spacing(tmp_path: Path) -> None:
    # The same voxels, written with 0.6 x 1.3 x 2.2 mm voxels and a 30 degree rotation: the spacing is the
    # column norms of the affine (the diagonal would read 0.52 mm along the first axis).
    cos, sin = math.cos(math.radians(30)), math.sin(math.radians(30))
    rotation = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    spacing = (0.6, 1.3, 2.2)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = [12.0, -7.0, 3.0]
    data = np.asarray(nib.load(str(HIPPOCAMPUS_LABEL)).dataobj).astype(np.uint8)
    label_dir = tmp_path / "labels"
    pred_dir = tmp_path / "preds"
    label_dir.mkdir()
    pred_dir.mkdir()
    predictions = {"same": data, "shift0": _shift(data, 0), "shift2": _shift(data, 2)}
    for case, pred in predictions.items():
        _write_nifti(label_dir / f"{case}.nii.gz", data, affine)
        _write_nifti(pred_dir / f"{case}.nii.gz", pred, affine)

    rows = {row["case"]: row for row in evaluate_folders(pred_dir, label_dir, tmp_path / "out")["cases"]}
    for name in ("class_1", "class_2"):
        assert rows["same"][f"hd95_{name}"] == 0.0
        # Shifted along the finest axis, every surface distance is 0 or 0.6 mm.
        assert rows["shift0"][f"hd95_{name}"] == pytest.approx(0.6, abs=1e-5)
        # Along the coarsest axis, nearer surface voxels along the finer axes can cut some distances short.
        assert 0.6 < rows["shift2"][f"hd95_{name}"] <= 2.2 + 1e-5
