"""Overlay pictures: classes get distinct colours, background stays grey."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from unet_monai.visualize import overlay_slice, save_overlay_png


def test_classes_have_distinct_colours_and_background_stays_grey() -> None:
    image = np.tile(np.linspace(0, 100, 8, dtype=np.float32), (8, 1))
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[1:3, 1:3] = 1
    mask[5:7, 5:7] = 2
    rgb = overlay_slice(image, mask, max_label=2)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    background = rgb[mask == 0].astype(int)
    assert (background[:, 0] == background[:, 1]).all() and (background[:, 1] == background[:, 2]).all()
    colour_1 = rgb[mask == 1].mean(axis=0)
    colour_2 = rgb[mask == 2].mean(axis=0)
    assert np.abs(colour_1 - colour_2).max() > 60
    assert colour_1[1] > colour_1[0] and colour_2[2] > colour_2[0]  # green-ish, blue-ish


def test_save_overlay_png_puts_panels_side_by_side(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).normal(size=(20, 30, 10)).astype(np.float32)
    label = np.zeros((20, 30, 10), dtype=np.uint8)
    label[5:10, 5:20, 4] = 1
    for name, data in (("image", volume), ("label", label)):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{name}.nii.gz")
    png = save_overlay_png(tmp_path / "image.nii.gz", [tmp_path / "label.nii.gz"] * 2, tmp_path / "o.png")
    picture = np.asarray(Image.open(png))
    scale = 256 // 30
    assert picture.shape == (30 * scale, 2 * 20 * scale, 3)  # upright: second voxel axis is vertical
