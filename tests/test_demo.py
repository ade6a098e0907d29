"""The demo pipeline end to end, with a short training."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from pipelines.demo import run_demo


def test_demo_writes_masks_metrics_and_overlay(tmp_path: Path) -> None:
    summary = run_demo(output_dir=tmp_path, epochs=2, num_cases=6, num_test=2)
    masks = sorted((tmp_path / "masks").glob("*_seg.nii.gz"))
    assert len(masks) == 2
    for mask in masks:
        image = nib.load(tmp_path / "data" / "test" / "imagesTr" / mask.name.replace("_seg", ""))
        assert nib.load(mask).shape == image.shape
        np.testing.assert_allclose(nib.load(mask).affine, image.affine, atol=1e-5)
    with open(tmp_path / "metrics" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {"dice_head", "dice_tail", "iou_head"} <= set(rows[0])
    assert summary["num_cases"] == 2
    assert 0.0 <= summary["mean"]["dice"] <= 1.0
    overlay = Image.open(tmp_path / "overlay.png")
    assert overlay.mode == "RGB" and overlay.size[0] > overlay.size[1]  # prediction | reference side by side
    assert (tmp_path / "models" / "model.pt").is_file()
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))
