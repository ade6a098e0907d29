"""The unet-monai command line, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import AXIAL_ONLY, HIPPOCAMPUS, HIPPOCAMPUS_BUNDLE, require
from unet_monai.cli import main
from unet_monai.networks import list_networks

# A small axial network (one member, not the bundle's three-direction ensemble).
SMALL_NETWORK = ["--set", "network_def#features=8", "--set", "members=" + json.dumps(AXIAL_ONLY["members"])]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unet_monai.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "unet-monai"
    assert script.is_file()
    result = subprocess.run([str(script), "networks"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    assert result.stdout.split() == list_networks()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("demo", "--epochs"),
        ("train", "--bundle"),
        ("infer", "--input"),
        ("evaluate", "--label"),
        ("networks", "registry"),
    ],
)
def test_help_explains_each_command(command: str, expected: str) -> None:
    result = _cli(command, "--help")
    assert result.returncode == 0
    assert expected in result.stdout


def test_train_infer_evaluate(tmp_path: Path, synthetic_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    """Train an ensemble of two slice directions (each member in turn), infer with both, evaluate."""
    members = [
        {"slice_axis": 2, "roi_size": [48, 64], "epochs": 1},
        {"slice_axis": 0, "roi_size": [48, 48], "epochs": 1},
    ]
    two_members = ["--set", "network_def#features=8", "--set", "members=" + json.dumps(members)]
    models = tmp_path / "models"
    code = main(
        [
            "train",
            "--bundle",
            str(HIPPOCAMPUS_BUNDLE),
            "--data",
            str(synthetic_dataset),
            "--epochs",
            "1",
            *two_members,
            "--set",
            "val_interval=1",
            "--set",
            f"ckpt_dir={models}",
            "--set",
            f"output_dir={tmp_path / 'runs'}",
        ]
    )
    assert code == 0 and (models / "model.pt").is_file() and (models / "model_member1.pt").is_file()
    out = capsys.readouterr().out
    assert "member 0 of 2 (slice axis 2 )" in out and "member 1 of 2 (slice axis 0 )" in out
    assert str(models / "model.pt") in out and str(models / "model_member1.pt") in out

    images = synthetic_dataset / "imagesTr"
    masks = tmp_path / "masks"
    args = [
        "infer",
        "--bundle",
        str(HIPPOCAMPUS_BUNDLE),
        "--checkpoint",  # an explicit --checkpoint loads only the members it names
        f"{models / 'model.pt'},{models / 'model_member1.pt'}",
        *two_members,
    ]
    assert main([*args, "--input", str(images), "--output", str(masks)]) == 0
    written = sorted(p.name for p in masks.iterdir())
    expected = [p.name.replace(".nii.gz", "_seg.nii.gz") for p in images.iterdir()]
    expected.append("inference_report.json")
    assert written == sorted(expected)

    assert main(["evaluate", "--pred", str(masks), "--label", str(synthetic_dataset / "labelsTr"),
                 "--output", str(tmp_path / "report"), "--class-names", "head", "tail"]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["num_cases"] == 6
    assert set(summary["per_class"]) == {"head", "tail"}
    csv_rows = (tmp_path / "report" / "metrics.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 7 and csv_rows[0].startswith("case,dice_head")


def test_infer_real_hippocampus_file_and_folder(tmp_path: Path, trained_checkpoint: Path) -> None:
    source = sorted((require(HIPPOCAMPUS) / "imagesTr").glob("*.nii.gz"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for path in source:
        (folder / path.name).symlink_to(path)
    args = [
        "infer",
        "--bundle",
        str(HIPPOCAMPUS_BUNDLE),
        "--checkpoint",
        str(trained_checkpoint),
        *SMALL_NETWORK,
    ]
    assert main([*args, "--input", str(folder), "--output", str(tmp_path / "all")]) == 0
    assert main([*args, "--input", str(source[0]), "--output", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        source[0].name.replace(".nii.gz", "_seg.nii.gz"),
        "inference_report.json",
    ]
    for path in source:
        mask = nib.load(tmp_path / "all" / path.name.replace(".nii.gz", "_seg.nii.gz"))
        image = nib.load(path)
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)


def test_infer_errors_name_the_problem(tmp_path: Path) -> None:
    bundle = ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="no such file or folder"):
        main([*bundle, "--input", str(tmp_path / "missing.nii.gz")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no image files"):
        main([*bundle, "--input", str(tmp_path / "empty")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SystemExit, match="not an image file"):
        main([*bundle, "--input", str(tmp_path / "notes.txt")])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    assert (
        main([*bundle, "--input", str(tmp_path / "v.nii.gz"), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    )


def test_evaluate_error_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "label").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "label" / "case.nii.gz")
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"),
                 "--output", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "case" in capsys.readouterr().err


def test_train_errors_inside_bundle_configs_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train = ["train", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--epochs", "1"]
    assert main([*train, "--data", str(tmp_path / "nowhere")]) == 2
    assert "no dataset.json" in capsys.readouterr().err
    code = main(
        [
            *train,
            "--data",
            str(require(HIPPOCAMPUS)),
            "--set",
            "num_cases=4",
            "--set",
            "network_def#name=vnet_typo",
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "unknown network 'vnet_typo'" in error and "ronneberger_unet" in error
