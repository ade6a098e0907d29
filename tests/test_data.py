"""Datalists from the MSD layout and from folders; the synthetic generator."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import HIPPOCAMPUS, require
from unet_monai.data import (
    case_name,
    folder_datalist,
    make_synthetic_dataset,
    msd_datalist,
    msd_label_names,
    split_datalist,
)


def test_msd_datalist_reads_real_hippocampus_dataset() -> None:
    items = msd_datalist(require(HIPPOCAMPUS))
    assert len(items) == 203
    assert all(Path(item["image"]).is_file() and Path(item["label"]).is_file() for item in items)
    assert all(Path(item["image"]).is_absolute() for item in items)
    assert case_name(items[0]["image"]) == case_name(items[0]["label"]) == "hippocampus_001"
    assert msd_label_names(HIPPOCAMPUS) == {0: "background", 1: "Anterior", 2: "Posterior"}


def test_msd_datalist_names_missing_files(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(
        json.dumps({"training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]})
    )
    with pytest.raises(FileNotFoundError, match="a.nii.gz"):
        msd_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        msd_datalist(tmp_path / "elsewhere")


def test_folder_datalist_pairs_by_case_name(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("b", "a"):
        (tmp_path / "images" / f"{name}.nii.gz").write_bytes(b"")
        (tmp_path / "masks" / f"{name}_mask.nii.gz").write_bytes(b"")
    items = folder_datalist(tmp_path / "images", tmp_path / "masks", label_suffix="_mask")
    assert [Path(i["image"]).name for i in items] == ["a.nii.gz", "b.nii.gz"]
    assert [Path(i["label"]).name for i in items] == ["a_mask.nii.gz", "b_mask.nii.gz"]
    assert folder_datalist(tmp_path / "images") == [{"image": i["image"]} for i in items]
    (tmp_path / "masks" / "b_mask.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="b_mask.nii.gz"):
        folder_datalist(tmp_path / "images", tmp_path / "masks", label_suffix="_mask")


def test_split_is_seeded_disjoint_and_complete() -> None:
    items = [{"image": f"{i}.nii.gz"} for i in range(10)]
    train, val = split_datalist(items, val_fraction=0.2, seed=0)
    assert len(train) == 8 and len(val) == 2
    assert sorted(i["image"] for i in train + val) == sorted(i["image"] for i in items)
    assert split_datalist(items, 0.2, seed=0) == (train, val)
    assert split_datalist(items, 0.2, seed=1) != (train, val)
    with pytest.raises(ValueError, match="val_fraction"):
        split_datalist(items, 1.5)


def test_synthetic_dataset_is_seeded_with_real_geometry(tmp_path: Path) -> None:
    first = make_synthetic_dataset(tmp_path / "a", num_cases=2, seed=5)
    second = make_synthetic_dataset(tmp_path / "b", num_cases=2, seed=5)
    items = msd_datalist(first)
    assert len(items) == 2
    image = nib.load(items[0]["image"])
    label = nib.load(items[0]["label"])
    again = nib.load(msd_datalist(second)[0]["image"])
    np.testing.assert_array_equal(image.get_fdata(), again.get_fdata())
    assert image.shape == label.shape == (40, 48, 32)
    np.testing.assert_allclose(image.affine, label.affine)
    assert not np.allclose(image.affine[:3, :3], np.diag(np.diag(image.affine[:3, :3])))  # rotated
    assert nib.aff2axcodes(image.affine)[0] == "L"  # not RAS
    values, counts = np.unique(np.asarray(label.dataobj), return_counts=True)
    assert values.tolist() == [0, 1, 2] and counts.min() > 100


def test_fold_split_validates_every_case_once_over_the_folds() -> None:
    from unet_monai.data import fold_split

    items = [{"image": f"case_{k}.nii.gz"} for k in range(11)]
    validated = []
    for fold in range(5):
        train, validation = fold_split(items, num_folds=5, fold=fold, seed=0)
        assert len(train) + len(validation) == 11 and not {i["image"] for i in train} & {
            i["image"] for i in validation
        }
        validated += [item["image"] for item in validation]
    assert sorted(validated) == sorted(item["image"] for item in items)
    assert fold_split(items, 5, 2, 0) == fold_split(items, 5, 2, 0)  # seeded: the same folds every time
    for arguments, message in [
        ((1, 0), "num_folds: must be at least 2"),
        ((5, 5), "fold: must be between 0 and 4"),
    ]:
        with pytest.raises(ValueError, match=message):
            fold_split(items, *arguments)
    with pytest.raises(ValueError, match="12 folds need at least 12 cases"):
        fold_split(items, 12, 0)
