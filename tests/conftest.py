"""Shared fixtures: paths to the real data in ../shared/data and a small trained bundle checkpoint."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.orthanc_server import (
    INSTALL_HINT,
    OrthancServer,
    find_dicomweb_plugin,
    find_orthanc,
    orthanc_server,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "msd-hippocampus"
SPINALCORD = SHARED_DATA / "spinalcord"
HIPPOCAMPUS_BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"

# One axial network instead of the bundle's three-direction ensemble: what the test trainings train
# and what inference / evaluation of their checkpoints must then be told.
AXIAL_ONLY = {"members": [{"slice_axis": 2, "roi_size": [48, 64], "epochs": 1}]}
# Small, fast settings for test trainings of the hippocampus bundle.
FAST_TRAIN = {
    **AXIAL_ONLY,
    "train#trainer#max_epochs": 1,
    "val_interval": 1,
    "num_samples": 4,
    "batch_size": 2,
    "network_def#features": 8,
}


@contextmanager
def root_log_to_stdout() -> Iterator[None]:
    """A bundle's logging.conf binds a root StreamHandler to the sys.stdout of the test that ran it (pytest's
    capture, closed since): point it at the current stdout, so that a log line is not a "Logging error"."""
    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.stream = sys.stdout  # not setStream: it flushes the closed stream
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.stream = stream


@pytest.fixture(autouse=True)
def bundle_log_to_current_stdout() -> Iterator[None]:
    """Every test logs to its own stdout, not to the closed capture of a test that ran a bundle before."""
    with root_log_to_stdout():
        yield


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``unet-monai ARGS`` in-process: exit code, stdout, stderr (a ``SystemExit`` counts as its code)."""
    from unet_monai.cli import main

    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def wide_random_checkpoint(folder: Path, overrides: dict) -> Path:
    """A seeded random state_dict of the hippocampus bundle's network under ``overrides``, convolutions
    drawn wide enough (std 0.3) that its masks hold every label, so comparing masks is not vacuous."""
    from unet_monai.bundle import load_workflow

    parser = load_workflow(HIPPOCAMPUS_BUNDLE, "inference", **overrides).parser
    network = parser.get_parsed_content("network_def")
    torch.manual_seed(0)
    for module in network.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.normal_(module.weight, std=0.3)
    path = folder / "model.pt"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture
def package_log() -> Iterator[io.StringIO]:
    """Everything ``unet_monai``'s loggers log during a test (caplog's root handler does not survive the
    ``fileConfig`` a bundle's logging.conf runs)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("unet_monai")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def require(path: Path) -> Path:
    """Skip the test, naming the path, when real data is absent."""
    if not path.exists():
        pytest.skip(f"real data not found: {path} (expected ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's tests on one torch thread (tiny networks: on a busy 2-core machine two threads
    wait on each other at every op; a NASNet cell's forward took 9 s with two and 0.1 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_monai_bundle(config_file: Path | str, overrides: dict, timeout: int = 600) -> str:
    """Run ``python -m monai.bundle run`` from the repository root, as a user types it; its output.

    ``overrides`` become ``--key value`` arguments (values JSON-encoded). Fails the test, showing the
    end of the output, when the command exits non-zero.
    """
    arguments = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config_file)]
    for key, value in overrides.items():
        arguments += [f"--{key}", json.dumps(value)]
    result = subprocess.run(arguments, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def orthanc() -> Iterator[OrthancServer]:
    """A private Orthanc (DICOMweb plugin on) on loopback for one test module; skips, naming the
    packages, where Orthanc is not installed."""
    if find_orthanc() is None or find_dicomweb_plugin() is None:
        pytest.skip(f"Orthanc not installed: {INSTALL_HINT}")
    with orthanc_server() as server:
        yield server


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unet_monai.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_cases=6, seed=3)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """A checkpoint of the hippocampus bundle's network (8 base features), trained one epoch."""
    from unet_monai.bundle import run_workflow

    models = tmp_path_factory.mktemp("models")
    run_workflow(
        HIPPOCAMPUS_BUNDLE,
        "train",
        dataset_dir=str(synthetic_dataset),
        ckpt_dir=str(models),
        output_dir=str(models / "runs"),
        **FAST_TRAIN,
    )
    checkpoint = models / "model.pt"
    assert checkpoint.is_file()
    return checkpoint


def assert_scripted_export_matches(
    bundle: Path, checkpoint: Path, overrides: dict, shapes: Iterable[Sequence[int]], tmp_path: Path
) -> None:
    """``monai.bundle ckpt_export`` of ``checkpoint`` (scripted TorchScript, not traced) gives the
    eager network's outputs for every input shape in ``shapes``."""
    from monai.bundle import ckpt_export

    from unet_monai.bundle import load_workflow

    configs = bundle / "configs"
    exported = tmp_path / "model.ts"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(checkpoint),
        key_in_ckpt="model" if "model" in state else "",  # {"model", "settings"} from a bundle's training
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        bundle_root=str(bundle),
        **overrides,
    )
    scripted = torch.jit.load(str(exported))
    network = load_workflow(bundle, "inference", **overrides).parser.get_parsed_content("network_def")
    # ignite's Checkpoint saves a one-object save_dict as the network's state_dict itself.
    network.load_state_dict(state.get("model", state))
    network.eval()
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(*shape)
            torch.testing.assert_close(scripted(x), network(x))
