"""A planned bundle: written from the data alone, it follows the contract, trains, stops at its time
limit, keeps its settings in model.pt, and writes masks on each input's own grid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unet_monai.bundle import run_workflow
from unet_monai.bundle_contract import contract_problems, zoo_problems
from unet_monai.checkpoints import read_settings
from unet_monai.data import make_synthetic_dataset
from unet_monai.planning.bundle_writer import SHARED
from unet_monai.planning.planner import plan_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A bundle planned (with a 3-minute budget) from 6 synthetic volumes whose spacings differ."""
    root = tmp_path_factory.mktemp("planned")
    data = make_synthetic_dataset(root / "data", num_cases=6, shape=(24, 28, 20), seed=4)
    for index, path in enumerate(sorted((data / "imagesTr").glob("*.nii.gz"))):
        label = data / "labelsTr" / path.name
        for file in (path, label):  # every other case at 1.5 mm slices: resampling is needed
            image = nib.load(file)
            affine = image.affine.copy()
            affine[:3, 2] *= 1.5 if index % 2 else 1.0
            nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), file)
    plan = plan_bundle(root / "bundle", data_dir=data, budget_minutes=3, progress=False)
    return root / "bundle", data, plan


def test_the_planned_bundle_follows_the_contract_and_the_zoo_conventions(
    planned: tuple[Path, Path, dict],
) -> None:
    bundle, _, plan = planned
    assert contract_problems(bundle) == []
    # a freshly planned bundle has no weights yet, and its dataset_dir is the user's own folder
    left = [p for p in zoo_problems(bundle) if "dataset_dir default" not in p and "models/model.pt" not in p]
    assert left == []
    assert json.loads((bundle / "plan.json").read_text()) == plan
    assert json.loads((bundle / "fingerprint.json").read_text())["num_cases"] == 6
    readme = (bundle / "docs" / "README.md").read_text()
    assert f"{plan['max_epochs']} epochs" in readme and plan["reasons"]["configuration"] in readme
    assert plan["resample"] is True and "resampled to the median" in plan["reasons"]["spacing"]
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["max_epochs"] == plan["max_epochs"] >= 1 and train["time_limit_minutes"] == 3
    assert train["pixdim"] == plan["target_spacing"]


def test_training_stops_at_the_time_limit_validates_and_keeps_its_settings(
    planned: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    bundle = shutil.copytree(planned[0], tmp_path / "bundle")
    workflow = run_workflow(bundle, "train", max_epochs=500, val_interval=100, time_limit_minutes=0.001)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 1  # the limit passed during epoch 1
    settings = read_settings(bundle / "models" / "model.pt")
    assert settings is not None and settings["bundle"] == "bundle"
    assert settings["values"]["roi_size"] == planned[2]["roi_size"]
    assert settings["values"]["pixdim"] == planned[2]["target_spacing"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(bundle / "runs")).Reload()
    assert {"train_loss", "learning_rate", "val_mean_dice"} <= set(events.Tags()["scalars"])


def test_inference_writes_masks_on_each_inputs_grid(planned: tuple[Path, Path, dict], tmp_path: Path) -> None:
    bundle = shutil.copytree(planned[0], tmp_path / "bundle")
    run_workflow(bundle, "train", max_epochs=1, val_interval=1)
    images = sorted((planned[1] / "imagesTr").glob("*.nii.gz"))[:2]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for image in images:
        shutil.copy(image, inputs / image.name)
    run_workflow(bundle, "inference", dataset_dir=str(inputs), output_dir=str(tmp_path / "masks"))
    for image in images:
        mask = nib.load(tmp_path / "masks" / image.name.replace(".nii.gz", "_seg.nii.gz"))
        source = nib.load(image)
        assert mask.shape == source.shape
        assert np.allclose(mask.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1, 2}


def test_a_folder_of_images_and_one_of_labels_plans_too(tmp_path: Path) -> None:
    data = make_synthetic_dataset(tmp_path / "data", num_cases=5, shape=(20, 24, 16), seed=5)
    plan = plan_bundle(
        tmp_path / "bundle", images_dir=data / "imagesTr", labels_dir=data / "labelsTr", progress=False
    )
    assert plan["configuration"] == "3d" and "max_epochs" not in plan
    assert contract_problems(tmp_path / "bundle") == []
    workflow = run_workflow(tmp_path / "bundle", "train", max_epochs=1, val_interval=1)
    assert len(workflow.parser.get_parsed_content("split")[1]) == 1  # fold 0 of 5 holds one case
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()


def test_planning_into_an_existing_bundle_is_refused_unless_forced(
    planned: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    bundle = shutil.copytree(planned[0], tmp_path / "bundle")
    (bundle / "models" / "model.pt").write_bytes(b"trained weights")
    with pytest.raises(FileExistsError, match="holds a bundle already"):
        plan_bundle(bundle, data_dir=planned[1], progress=False)
    plan_bundle(bundle, data_dir=planned[1], progress=False, overwrite=True)
    assert (bundle / "models" / "model.pt").read_bytes() == b"trained weights"  # never touched


def test_a_planned_bundle_runs_as_a_model_zoo_user_runs_it(
    planned: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """From inside the bundle folder, MONAI's own command with only --dataset_dir (and an output)."""
    bundle = shutil.copytree(planned[0], tmp_path / "bundle")
    run_workflow(bundle, "train", max_epochs=1, val_interval=1)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--bundle_root", ".",
        "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.json", "--logging_file", "configs/logging.conf",
        "--dataset_dir", str(planned[1] / "imagesTr"), "--output_dir", str(tmp_path / "masks"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(list((tmp_path / "masks").glob("*_seg.nii.gz"))) == 6


def test_the_budget_comes_from_a_probe_of_the_bundles_real_training(planned: tuple[Path, Path, dict]) -> None:
    plan = planned[2]
    assert plan["probe_iterations"] >= 3 + 6  # the bundle's own trainer: 3 warm-up and 6 timed steps
    assert plan["step_seconds"] > 0 and plan["cache_seconds_per_case"] > 0
    assert plan["validation_seconds_per_case"] > 0
    epoch = plan["iterations_per_epoch"] * plan["step_seconds"]
    assert plan["max_epochs"] * epoch <= 3 * 60  # the 3-minute budget holds the planned epochs
    assert not list(planned[0].parent.glob(".partial-plan-*"))  # the probe's staging folder is gone


def test_the_shared_blocks_planned_bundles_copy_are_the_contracts_reference() -> None:
    """unet_monai/planning/shared holds the contract's shared blocks as the reference bundle has them."""
    reference = Path(__file__).resolve().parents[1] / "bundles" / "hippocampus_unet3d" / "configs"
    for name in ("logging.conf", "multi_gpu_train.json"):
        assert (SHARED / name).read_text() == (reference / name).read_text(), name
