"""Patient volumes from per-slice LGG masks: the 3D largest-component step and the patient's Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet_monai.data.lgg_volume import (
    keep_largest_tumour,
    patient_dice,
    predicted_mask_path,
    slices_by_patient,
    write_patient_dice,
)


def _write(path: Path, mask: np.ndarray) -> None:
    tifffile.imwrite(path, (mask > 0).astype(np.uint8) * 255)


def _patient(tmp_path: Path, name: str = "TCGA_XX_0001_20000101", slices: int = 4) -> tuple[Path, Path]:
    """Image stubs, true masks (a 3-slice block) and predicted masks: the block plus one stray blob."""
    folder, pred = tmp_path / name, tmp_path / "pred"
    folder.mkdir()
    pred.mkdir(exist_ok=True)
    for n in range(1, slices + 1):
        (folder / f"{name}_{n}.tif").write_bytes(b"")  # names only: these tests never read images
        truth = np.zeros((32, 32), bool)
        predicted = np.zeros((32, 32), bool)
        if 2 <= n <= 4:
            truth[10:20, 10:20] = True
            predicted[11:20, 10:20] = True
        if n == 1:
            predicted[0:3, 28:31] = True  # 9 stray pixels, not touching the block in 3D
        _write(folder / f"{name}_{n}_mask.tif", truth)
        _write(pred / f"{name}_{n}_seg.tif", predicted)
    return folder, pred


def test_slices_are_grouped_by_patient_in_numeric_order(tmp_path: Path) -> None:
    names = ["P_A_10.tif", "P_A_2.tif", "P_B_1.tif", "P_A_1.tif"]
    groups = slices_by_patient([tmp_path / name for name in names])
    assert {k: [p.name for p in v] for k, v in groups.items()} == {
        "P_A": ["P_A_1.tif", "P_A_2.tif", "P_A_10.tif"],
        "P_B": ["P_B_1.tif"],
    }
    with pytest.raises(ValueError, match="noslice.tif"):
        slices_by_patient([tmp_path / "noslice.tif"])


def test_largest_component_removes_the_stray_blob_and_raises_the_dice(tmp_path: Path) -> None:
    folder, pred = _patient(tmp_path)
    # truth 300 pixels, prediction 270 inside it + 9 stray: 2 * 270 / (279 + 300)
    assert patient_dice(folder, pred) == {folder.name: pytest.approx(540 / 579)}
    untouched = (pred / f"{folder.name}_3_seg.tif").read_bytes()
    assert keep_largest_tumour(folder, pred) == {folder.name: 9}
    assert patient_dice(folder, pred) == {folder.name: pytest.approx(540 / 570)}
    assert not tifffile.imread(pred / f"{folder.name}_1_seg.tif").any()
    # masks that did not change are not rewritten; no temporary files are left behind
    assert (pred / f"{folder.name}_3_seg.tif").read_bytes() == untouched
    assert sorted(p.name for p in pred.iterdir()) == sorted(f"{folder.name}_{n}_seg.tif" for n in range(1, 5))
    csv_path = tmp_path / "out" / "patient_dice.csv"
    write_patient_dice(patient_dice(folder, pred), csv_path)
    assert csv_path.read_text().splitlines() == ["patient,dice", f"{folder.name},0.9474", "mean,0.9474"]


def test_empty_predictions_stay_empty_and_a_missing_mask_is_named(tmp_path: Path) -> None:
    folder, pred = _patient(tmp_path)
    for path in pred.iterdir():
        _write(path, np.zeros((32, 32), bool))
    assert keep_largest_tumour(folder, pred) == {folder.name: 0}
    assert patient_dice(folder, pred) == {folder.name: 0.0}
    missing = predicted_mask_path(folder / f"{folder.name}_2.tif", pred)
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        keep_largest_tumour(folder, pred)
