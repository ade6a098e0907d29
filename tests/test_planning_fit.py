"""``fit``: plan + train + evaluate in one call; K folds share the budget and ensemble at inference."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch

from unet_monai.bundle import run_workflow
from unet_monai.bundle_contract import contract_problems
from unet_monai.checkpoints import read_settings, read_state_dict
from unet_monai.data import make_synthetic_dataset
from unet_monai.networks import FoldEnsemble, fold_ensemble
from unet_monai.planning.fit import REPORT, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fold_ensemble_averages_member_probabilities() -> None:
    members = [torch.nn.Conv2d(1, 3, 1) for _ in range(2)]
    ensemble = FoldEnsemble(members)
    x = torch.randn(2, 1, 8, 8)
    expected = (torch.softmax(members[0](x), 1) + torch.softmax(members[1](x), 1)) / 2
    assert torch.allclose(torch.softmax(ensemble(x), 1), expected, atol=1e-5)
    single = torch.nn.Conv2d(1, 3, 1)
    assert fold_ensemble(single, 1) is single
    assert set(fold_ensemble(single, 3).state_dict()) == {
        f"members.{k}.{n}" for k in range(3) for n in ("weight", "bias")
    }
    with pytest.raises(ValueError, match="ensemble_folds: must be at least 1"):
        fold_ensemble(single, 0)


def test_two_folds_train_evaluate_and_ensemble_at_inference(tmp_path: Path) -> None:
    data = make_synthetic_dataset(tmp_path / "data", num_cases=6, shape=(20, 24, 16), seed=2)
    report = fit(tmp_path / "bundle", data_dir=data, budget_minutes=1.0, folds=2, progress=False)
    assert json.loads((tmp_path / "bundle" / REPORT).read_text()) == report
    assert [entry["fold"] for entry in report["per_fold"]] == [0, 1]
    for entry in report["per_fold"]:
        assert 0.0 <= entry["metrics"]["val_mean_dice"] <= 1.0 and entry["epochs"] >= 1
        evaluation = Path(entry["evaluation"])
        assert (evaluation / "val_mean_dice_raw.csv").is_file() and (evaluation / "metrics.csv").is_file()
        summary = json.loads((evaluation / "summary.json").read_text())
        assert summary["num_cases"] == 3 and 0.0 <= summary["mean"]["dice"] <= 1.0
        assert (evaluation / "overlay_best.png").is_file()
    dice = [entry["metrics"]["val_mean_dice"] for entry in report["per_fold"]]
    assert report["mean_val_dice"] == pytest.approx(sum(dice) / 2, abs=1e-4)
    # the two folds' validation cases together are every case once (3 + 3 of 6)
    validated = [
        len((Path(entry["evaluation"]) / "val_mean_dice_raw.csv").read_text().strip().splitlines()) - 1
        for entry in report["per_fold"]
    ]
    assert validated == [3, 3]
    model = tmp_path / "bundle" / "models" / "model.pt"
    assert {key.split(".")[1] for key in read_state_dict(model)} == {"0", "1"}
    assert read_settings(model) is not None
    inference = json.loads((tmp_path / "bundle" / "configs" / "inference.json").read_text())
    assert inference["ensemble_folds"] == 2
    metadata = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert metadata["eval_metrics"]["val_mean_dice"] == report["mean_val_dice"]
    readme = (tmp_path / "bundle" / "docs" / "README.md").read_text()
    assert "2-fold cross-validation" in readme and f"val_mean_dice {report['mean_val_dice']}" in readme
    assert contract_problems(tmp_path / "bundle") == []
    image = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
    run_workflow(
        tmp_path / "bundle",
        "inference",
        dataset_dir=str(data / "imagesTr"),
        output_dir=str(tmp_path / "masks"),
    )
    mask = nib.load(tmp_path / "masks" / image.name.replace(".nii.gz", "_seg.nii.gz"))
    assert mask.shape == nib.load(image).shape


def test_zero_folds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--folds: must be at least 1"):
        fit(tmp_path / "bundle", data_dir=tmp_path, folds=0)


def test_auto_compares_3d_and_2_5d_and_keeps_the_better(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("unet_monai.planning.fit.COMPARE_MIN_BUDGET", 1.0)  # a test-sized budget
    data = make_synthetic_dataset(tmp_path / "data", num_cases=5, shape=(20, 24, 16), seed=3)
    report = fit(tmp_path / "bundle", data_dir=data, budget_minutes=1.0, progress=False)
    choice = report["configuration_choice"]
    assert set(choice["scores"]) == {"3d", "2.5d"}
    assert choice["scores"][choice["kept"]] == max(choice["scores"].values())
    assert report["configuration"] == choice["kept"]
    plan = json.loads((tmp_path / "bundle" / "plan.json").read_text())
    assert plan["configuration"] == choice["kept"]
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()
    assert json.loads((tmp_path / "bundle" / REPORT).read_text())["configuration_choice"] == choice
