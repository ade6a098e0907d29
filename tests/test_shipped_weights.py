"""The weights the hippocampus bundles ship: a fresh clone segments a volume with no training.

``unet-monai infer`` with no ``--checkpoint`` must use ``BUNDLE/models/model.pt`` as committed (its sha256
as ``large_files.yml`` lists it) and give a mask of the quality the bundle's docs report, on held-out
validation cases of the real MSD hippocampus data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_dice

from tests.conftest import HIPPOCAMPUS, REPO_ROOT, require, run_cli
from unet_monai.bundle import load_workflow
from unet_monai.shipped import MAX_SHIPPED_BYTES, listed_files, sha256, verify_listed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHIPPED = ["hippocampus_unet2d", "hippocampus_unet3d"]
CASES = 2  # held-out validation cases segmented per bundle
MIN_DICE = 0.8  # mean over anterior / posterior; the bundles' docs report about 0.89 on all 41 cases


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_is_compact_and_listed(name: str) -> None:
    bundle = REPO_ROOT / "bundles" / name
    weights = bundle / "models" / "model.pt"
    assert weights.is_file(), f"{weights}: the bundle ships no weights"
    models_bytes = sum(p.stat().st_size for p in (bundle / "models").iterdir() if p.is_file())
    assert models_bytes <= MAX_SHIPPED_BYTES
    entry = listed_files(bundle)["models/model.pt"]
    assert entry["hash_type"] == "sha256" and entry["hash_val"] == sha256(weights)
    assert verify_listed(bundle, weights) is True


@pytest.mark.parametrize("name", SHIPPED)
def test_fresh_clone_segments_held_out_volumes_with_the_shipped_weights(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = require(HIPPOCAMPUS)
    bundle = REPO_ROOT / "bundles" / name
    split = load_workflow(bundle, "train", dataset_dir=str(data)).parser.get_parsed_content("split")
    validation = split[1][:CASES]
    scans = tmp_path / "scans"
    scans.mkdir()
    for item in validation:
        shutil.copy(item["image"], scans / Path(item["image"]).name)

    code, out, err = run_cli(
        ["infer", "--bundle", str(bundle), "--input", str(scans), "--output", str(tmp_path / "out")], capsys
    )
    assert code == 0, err
    for item in validation:
        case = Path(item["image"]).name.removesuffix(".nii.gz")
        mask = nib.load(tmp_path / "out" / f"{case}_seg.nii.gz")
        label = nib.load(item["label"])
        assert mask.shape == label.shape and np.allclose(mask.affine, label.affine)
        prediction = torch.as_tensor(np.asarray(mask.dataobj), dtype=torch.long)
        reference = torch.as_tensor(np.asarray(label.dataobj), dtype=torch.long)
        one_hot = [
            torch.nn.functional.one_hot(t, 3).permute(3, 0, 1, 2)[None] for t in (prediction, reference)
        ]
        dice = compute_dice(*one_hot, include_background=False)
        assert dice.mean().item() >= MIN_DICE, f"{name} {case}: Dice {dice.tolist()}"
