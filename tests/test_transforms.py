"""Transform chains on real files from ../shared/data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import HIPPOCAMPUS, SHARED_DATA, SPINALCORD, require
from unet_monai.data import msd_datalist
from unet_monai.transforms import build_eval_transforms, build_train_transforms, load_transforms


def test_train_chain_samples_labelled_slices_of_roi_size() -> None:
    item = msd_datalist(require(HIPPOCAMPUS))[0]
    chain = build_train_transforms(slice_axis=2, roi_size=(48, 64), num_samples=6, pos_fraction=1.0)
    samples = chain(item)
    assert len(samples) == 6
    for sample in samples:
        assert sample["image"].shape == (1, 48, 64)
        assert sample["label"].shape == (1, 48, 64)
        assert sample["image"].dtype == torch.float32
        assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0, 2.0}
        assert sample["label"].max() > 0  # pos_fraction 1: every slice holds foreground


def test_train_chain_3d_patches_and_augmentation() -> None:
    item = msd_datalist(require(HIPPOCAMPUS))[1]
    chain = build_train_transforms(slice_axis=None, roi_size=(32, 32, 32), num_samples=2, shear=0.035)
    samples = chain(item)
    assert [s["image"].shape for s in samples] == [(1, 32, 32, 32)] * 2


def test_eval_chain_reorients_to_ras_and_zscores() -> None:
    path = require(SPINALCORD / "t2" / "t2.nii.gz")
    assert nib.aff2axcodes(nib.load(path).affine) == ("P", "S", "R")
    image = build_eval_transforms(label_key=None, intensity="zscore")({"image": str(path)})["image"]
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    assert image.shape == (1, 52, 60, 55)  # PSR (60, 55, 52) -> RAS
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1.0) < 1e-2


def test_percentile_scaling_clips_to_unit_range() -> None:
    item = msd_datalist(require(HIPPOCAMPUS))[0]
    chain = build_eval_transforms(intensity="percentile", percentiles=(5, 95))
    image = chain(item)["image"]
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    raw = np.asarray(nib.load(item["image"]).dataobj, dtype=np.float32)
    assert float((image == 1.0).float().mean()) == pytest.approx(
        float((raw >= np.percentile(raw, 95)).mean()), abs=0.02
    )


def test_divisible_padding_and_resize() -> None:
    item = msd_datalist(require(HIPPOCAMPUS))[0]
    padded = build_eval_transforms(divisible_by=16)(item)
    assert all(size % 16 == 0 for size in padded["image"].shape[1:])
    assert padded["image"].shape == padded["label"].shape
    resized = build_eval_transforms(resize_to=(64, 64, 64))(item)
    assert resized["image"].shape == resized["label"].shape == (1, 64, 64, 64)
    assert set(torch.unique(resized["label"]).tolist()) == {0.0, 1.0, 2.0}  # nearest keeps label values


def test_loading_png_tiff_and_dicom_series_through_monai_readers() -> None:
    png = require(SHARED_DATA / "isbi2012-em" / "train" / "image" / "0.png")
    image = load_transforms(["image"], axcodes=None)[0]({"image": str(png)})["image"]
    assert image.shape == (512, 512)
    tiff_dir = require(SHARED_DATA / "lgg-kaggle3m-subset")
    tiff = sorted(p for p in tiff_dir.rglob("*.tif") if not p.name.endswith("_mask.tif"))[0]
    chain = load_transforms(["image"], reader="PILReader", axcodes=None)
    assert chain[1](chain[0]({"image": str(tiff)}))["image"].shape == (3, 256, 256)
    series = require(SHARED_DATA / "dicom-mr-series-nolabel" / "Study1" / "13_HCropVolume")
    volume = build_eval_transforms(label_key=None, reader="ITKReader")({"image": str(series)})["image"]
    assert volume.ndim == 4 and 32 in volume.shape[1:]


def test_unknown_intensity_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="intensity method"):
        build_eval_transforms(intensity="minmax")
