"""``unet-monai plan`` and ``unet-monai fit`` as a user types them, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import run_cli
from unet_monai.bundle_contract import contract_problems
from unet_monai.data import make_synthetic_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), num_cases=5, shape=(20, 24, 16), seed=6)


def test_plan_writes_a_bundle_and_says_what_it_chose(dataset: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["plan", "--data", str(dataset), "--output", str(tmp_path / "mine")], capsys)
    assert code == 0, err
    assert "configuration 3d" in out and "why configuration:" in out and "train it: unet-monai train" in out
    assert contract_problems(tmp_path / "mine") == []
    readme = (tmp_path / "mine" / "docs" / "README.md").read_text()
    assert f"unet-monai plan --data {dataset} --output {tmp_path / 'mine'}" in readme


def test_fit_trains_and_infer_needs_no_settings_repeated(dataset: Path, tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "mine"
    code, out, err = run_cli(
        ["fit", "--data", str(dataset), "--output", str(bundle), "--budget", "0.5"], capsys
    )
    assert code == 0, err
    assert "fold 0: validation Dice" in out and "mean validation Dice" in out
    report = json.loads((bundle / "fit_report.json").read_text())
    assert report["budget_minutes"] == 0.5 and report["folds"] == 1
    image = sorted((dataset / "imagesTr").glob("*.nii.gz"))[0]
    code, _, err = run_cli(
        ["infer", "--bundle", str(bundle), "--input", str(image), "--output", str(tmp_path / "masks")], capsys
    )
    assert code == 0, err
    mask = nib.load(tmp_path / "masks" / image.name.replace(".nii.gz", "_seg.nii.gz"))
    assert mask.shape == nib.load(image).shape


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give --data DIR (a folder with dataset.json), or --images DIR and --labels DIR"),
        (["--images", "x"], "give --data DIR (a folder with dataset.json), or --images DIR and --labels DIR"),
        (["--data", "/no/such/folder"], "/no/such/folder: no such folder"),
        (["--configuration", "3d", "--budget", "0.001"], "does not cover caching and one epoch"),
    ],
)
def test_plan_errors_are_one_line(
    arguments: list[str], message: str, dataset: Path, tmp_path: Path, capsys
) -> None:
    if arguments[:1] == ["--configuration"]:
        arguments = ["--data", str(dataset), *arguments]
    code, _, err = run_cli(["plan", *arguments, "--output", str(tmp_path / "b")], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # nothing left behind, not even a partial


def test_an_undeclared_label_value_names_the_file(dataset: Path, tmp_path: Path, capsys) -> None:
    data = make_synthetic_dataset(tmp_path / "bad", num_cases=3, shape=(16, 16, 12), seed=7)
    label = sorted((data / "labelsTr").glob("*.nii.gz"))[1]
    image = nib.load(label)
    values = np.asanyarray(image.dataobj).copy()
    values[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(values, image.affine), label)
    code, _, err = run_cli(["plan", "--data", str(data), "--output", str(tmp_path / "b")], capsys)
    assert code == 2
    assert err.count("error:") == 1 and label.name in err and "7" in err


def test_planning_over_an_existing_bundle_needs_force(dataset: Path, tmp_path: Path, capsys) -> None:
    arguments = ["plan", "--data", str(dataset), "--output", str(tmp_path / "b")]
    assert run_cli(arguments, capsys)[0] == 0
    code, _, err = run_cli(arguments, capsys)
    assert code == 2 and "holds a bundle already" in err and "--force" in err
    assert run_cli([*arguments, "--force"], capsys)[0] == 0
