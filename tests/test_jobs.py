"""The job layer behind the CLI: a light import for --help, optional trackers as one line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from unet_monai.cli import main
from unet_monai.io import DEFAULT_CHECKPOINT

HIPPOCAMPUS_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "hippocampus_unet2d"


def test_cli_import_loads_no_torch() -> None:
    """``unet-monai --help`` must not pay for torch: importing the CLI (and the package) loads none of it."""
    code = "import unet_monai.cli, unet_monai, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_help_of_every_command_loads_no_torch() -> None:
    code = (
        "import sys\nfrom unet_monai.cli import main\n"
        "for command in (['--help'], ['train', '--help'], ['infer', '--help'], ['evaluate', '--help'],"
        " ['pacs', '--help'], ['demo', '--help'], ['networks', '--help']):\n"
        "    try:\n        main(command)\n    except SystemExit as exit_:\n        assert exit_.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_lazy_names_resolve() -> None:
    import unet_monai
    from unet_monai.networks import create_network

    assert unet_monai.networks.create_network is create_network
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        unet_monai.networks.nothing  # noqa: B018


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_tracking_without_mlflow_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--data", str(tmp_path), "--tracking", "mlflow"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: --tracking mlflow needs MLflow: pip install 'unet-monai[mlflow]'\n"


def test_default_checkpoint_is_named_once() -> None:
    assert DEFAULT_CHECKPOINT == "models/model.pt"
    assert (HIPPOCAMPUS_BUNDLE / DEFAULT_CHECKPOINT).is_file()
