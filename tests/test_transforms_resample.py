"""Chains for planned bundles: resampling to a target spacing (undone by Invertd, exactly back onto the
file's grid) and nnU-Net's CT normalisation (clip to foreground percentiles, one dataset z-score)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Invertd

from unet_monai.transforms import build_eval_transforms, build_train_transforms


def write_anisotropic_case(folder: Path) -> dict[str, str]:
    """A 24 x 20 x 8 volume of 1 x 1 x 3 mm with a labelled box, as image and label NIfTI files."""
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, size=(24, 20, 8)).astype(np.float32)
    label = np.zeros((24, 20, 8), dtype=np.uint8)
    label[6:18, 5:15, 2:6] = 1
    image[label == 1] += 300.0
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), folder / "case.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "case_label.nii.gz")
    return {"image": str(folder / "case.nii.gz"), "label": str(folder / "case_label.nii.gz")}


def test_eval_chain_resamples_to_the_target_spacing_and_inverts_exactly(tmp_path: Path) -> None:
    item = write_anisotropic_case(tmp_path)
    chain = build_eval_transforms(intensity="zscore", pixdim=(1.0, 1.0, 1.0), num_classes=2)
    data = chain(item)
    assert data["image"].shape == (1, 24, 20, 22)  # 8 slices of 3 mm -> 22 of 1 mm (same extent)
    assert np.allclose(np.abs(np.diag(data["image"].affine.numpy()))[:3], 1.0)
    assert set(torch.unique(data["label"]).tolist()) == {0.0, 1.0}  # nearest: labels stay labels
    data["pred"] = data["label"].clone()
    inverted = Invertd(keys="pred", transform=chain, orig_keys="label", nearest_interp=True)(data)
    original = nib.load(item["label"]).get_fdata()
    assert inverted["pred"].shape[1:] == original.shape
    assert np.array_equal(inverted["pred"][0].numpy(), original)


def test_train_chain_samples_patches_on_the_resampled_grid(tmp_path: Path) -> None:
    item = write_anisotropic_case(tmp_path)
    chain = build_train_transforms(
        slice_axis=None, roi_size=(16, 16, 16), num_samples=2, pixdim=(1.0, 1.0, 1.0), num_classes=2
    )
    samples = chain(item)
    assert [tuple(sample["image"].shape) for sample in samples] == [(1, 16, 16, 16)] * 2


def test_ct_normalisation_clips_then_applies_the_dataset_zscore(tmp_path: Path) -> None:
    item = write_anisotropic_case(tmp_path)
    stats = [80.0, 420.0, 250.0, 50.0]
    image = build_eval_transforms(label_key=None, intensity="ct", ct_stats=stats)({"image": item["image"]})[
        "image"
    ]
    raw = nib.load(item["image"]).get_fdata()
    expected = (np.clip(raw, 80.0, 420.0) - 250.0) / 50.0
    assert np.allclose(image[0].numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("stats", [None, [1.0, 2.0, 0.0], [5.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
def test_ct_normalisation_without_valid_statistics_is_refused(stats: list[float] | None) -> None:
    with pytest.raises(ValueError, match="intensity 'ct' needs ct_stats"):
        build_eval_transforms(label_key=None, intensity="ct", ct_stats=stats)
