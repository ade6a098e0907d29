"""Plans for every 3D and 2D set in ../shared/data, so that no decision is hippocampus-shaped, and
``fit`` end to end on the spinal cord as a user brings it (a folder of images, one of labels)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import SPINALCORD, require, run_cli
from tests.planning_data import BRATS, EM, LGG, brats_msd, em_folders, lgg_folders, spinal_cord_folders
from unet_monai.bundle_contract import contract_problems
from unet_monai.planning.fingerprint import fingerprint_dataset
from unet_monai.planning.plan import make_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_spinal_cord_is_planned_2d_across_its_thick_slices(tmp_path: Path) -> None:
    require(SPINALCORD)
    images, labels = spinal_cord_folders(tmp_path)
    plan = make_plan(fingerprint_dataset(images_dir=images, labels_dir=labels, workers=1, progress=False))
    assert plan["configuration"] == "2d" and plan["slice_axes"] == [2]  # RAS axis 2: 7.5 mm slices
    assert plan["resample"] is True and plan["target_spacing"] == pytest.approx([0.84375, 0.84375, 7.5])
    assert plan["network"]["spatial_dims"] == 2 and len(plan["roi_size"]) == 2
    assert plan["num_classes"] == 2 and plan["label_values"] is None and plan["axcodes"] == "RAS"


def test_brats_two_normalised_channels_are_left_as_they_are(tmp_path: Path) -> None:
    require(BRATS)
    plan = make_plan(fingerprint_dataset(brats_msd(tmp_path / "brats"), workers=1, progress=False))
    assert plan["intensity"] == "none" and plan["channels"] == 2
    assert plan["class_names"] == ["necrosis", "edema", "non-enhancing", "enhancing"]
    assert plan["num_classes"] == 5
    # 240 x 240 x 155 is too large to train whole on a CPU: slices along the three axes, 2 x 3 channels
    assert plan["configuration"] == "2.5d" and plan["network"]["in_channels"] == 6
    assert (
        make_plan(
            fingerprint_dataset(brats_msd(tmp_path / "again"), workers=1, progress=False), device="cuda"
        )["configuration"]
        == "3d"
    )


@pytest.mark.parametrize(("name", "folders", "channels"), [("lgg", lgg_folders, 3), ("em", em_folders, 1)])
def test_2d_folders_with_0_255_masks_map_their_labels(
    name: str, folders, channels: int, tmp_path: Path
) -> None:  # noqa: ANN001
    require(LGG if name == "lgg" else EM)
    images, labels = folders(tmp_path)
    fingerprint = fingerprint_dataset(
        images_dir=images, labels_dir=labels, workers=1, progress=False, max_cases=12
    )
    plan = make_plan(fingerprint)
    assert plan["configuration"] == "2d" and plan["slice_axes"] == [] and plan["axcodes"] is None
    assert plan["channels"] == channels and plan["network"]["in_channels"] == channels
    assert plan["label_values"] == [0, 255] and plan["num_classes"] == 2
    assert "mapped to classes 0 .. 1" in plan["reasons"]["labels"]


def test_fit_on_the_spinal_cord_folders_trains_infers_on_the_original_grid_and_evaluates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require(SPINALCORD)
    images, labels = spinal_cord_folders(tmp_path / "data")
    bundle = tmp_path / "cord"
    arguments = ["fit", "--images", str(images), "--labels", str(labels), "--output", str(bundle)]
    code, out, err = run_cli([*arguments, "--budget", "1"], capsys)
    assert code == 0, err
    assert contract_problems(bundle) == []
    report = json.loads((bundle / "fit_report.json").read_text())
    evaluation = Path(report["per_fold"][0]["evaluation"])
    assert json.loads((evaluation / "summary.json").read_text())["num_cases"] == 1
    image = images / "t2.nii.gz"  # PSR, 1 mm: resampled to 7.5 mm slices for the network, back for the mask
    code, _, err = run_cli(
        ["infer", "--bundle", str(bundle), "--input", str(image), "--output", str(tmp_path / "m")], capsys
    )
    assert code == 0, err
    mask, source = nib.load(tmp_path / "m" / "t2_seg.nii.gz"), nib.load(image)
    assert mask.shape == source.shape and np.allclose(mask.affine, source.affine, atol=1e-4)
    assert nib.aff2axcodes(mask.affine) == ("P", "S", "R")
