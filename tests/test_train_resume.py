"""Kill a real training with SIGKILL after its first per-epoch checkpoint, resume it, and check that it
continued where it stopped: same epoch count, same best metric, no half-written file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import HIPPOCAMPUS_BUNDLE, REPO_ROOT

EPOCHS = 6
# One axial network, tiny and quick (an epoch takes about a second at one thread), validated every epoch.
TINY = {
    "members": [{"slice_axis": 2, "roi_size": [48, 64], "epochs": EPOCHS}],
    "val_interval": 1,
    "num_samples": 8,
    "batch_size": 1,
    "network_def#features": 8,
}
# A best metric no tiny run reaches: if resuming lost it, the first validation would overwrite model.pt.
RECORDED_BEST = 0.99


def _environment() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    """Wait until ``path`` exists; fail, showing the log, if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(
                f"training ended (exit {process.returncode}) before {path.name}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {path.name} after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def _logged_epochs(output: str) -> list[int]:
    """The epochs whose validation metrics the run logged (StatsHandler: ``Epoch[k] Metrics -- ...``)."""
    return [int(k) for k in re.findall(r"Epoch\[(\d+)\] Metrics --", output)]


def _trainer_epoch(checkpoint: dict) -> int:
    trainer = checkpoint["trainer"]
    return trainer["iteration"] // trainer["epoch_length"]


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path: Path, synthetic_dataset: Path) -> None:
    models, runs, log = tmp_path / "models", tmp_path / "runs", tmp_path / "first_run.log"
    locations = {"dataset_dir": str(synthetic_dataset), "ckpt_dir": str(models), "output_dir": str(runs)}
    command = [sys.executable, "-m", "monai.bundle", "run"]
    command += ["--config_file", str(HIPPOCAMPUS_BUNDLE / "configs" / "train.json")]
    for key, value in (TINY | locations).items():
        command += [f"--{key}", json.dumps(value)]
    resume_file = models / "resume.pt"

    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, env=_environment()
        )
        _wait_for(resume_file, process, log)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    # Only whole files: no temporary file of an interrupted write, and the checkpoint loads safely.
    assert sorted(p.name for p in models.iterdir()) == ["model.pt", "resume.pt"]
    checkpoint = torch.load(resume_file, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "best_metric", "best_checkpoint"} <= set(
        checkpoint
    )
    killed_at = _trainer_epoch(checkpoint)
    assert 1 <= killed_at < EPOCHS, f"killed at epoch {killed_at}: the test needs a run stopped part-way"
    assert checkpoint["lr_scheduler"]["last_epoch"] == killed_at
    assert checkpoint["best_metric"]["best_metric_epoch"] >= 1

    # Record a best metric above anything this run reaches, at the kill epoch.
    checkpoint["best_metric"] = {"best_metric": RECORDED_BEST, "best_metric_epoch": killed_at}
    checkpoint["best_checkpoint"]["_saved"] = [(RECORDED_BEST, "model_key_metric=0.9900.pt")]
    torch.save(checkpoint, resume_file)
    best_model = (models / "model.pt").read_bytes()

    sets = [f"{key}={json.dumps(value)}" for key, value in (TINY | locations).items() if key != "dataset_dir"]
    resume = [sys.executable, "-m", "unet_monai.cli", "train", "--bundle", str(HIPPOCAMPUS_BUNDLE)]
    resume += ["--data", str(synthetic_dataset), "--resume"] + [a for s in sets for a in ("--set", s)]
    result = subprocess.run(
        resume, cwd=REPO_ROOT, capture_output=True, text=True, env=_environment(), timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]

    assert f"Restored all variables from {resume_file}" in output
    # It validated the epochs after the kill only, and finished at the configured epoch count.
    assert _logged_epochs(output) == list(range(killed_at + 1, EPOCHS + 1)), output[-3000:]
    final = torch.load(resume_file, map_location="cpu", weights_only=True)
    assert _trainer_epoch(final) == EPOCHS
    assert final["lr_scheduler"]["last_epoch"] == EPOCHS
    # The best metric carried over: reported as the best, kept in the checkpoint, model.pt not replaced.
    assert f"best value: {RECORDED_BEST} at epoch: {killed_at}" in output
    assert final["best_metric"] == {"best_metric": RECORDED_BEST, "best_metric_epoch": killed_at}
    assert (models / "model.pt").read_bytes() == best_model
    assert sorted(p.name for p in models.iterdir()) == ["model.pt", "resume.pt"]


def test_resume_without_checkpoint_starts_at_epoch_one(tmp_path: Path) -> None:
    from ignite.engine import Engine

    from unet_monai.handlers import ResumeCheckpoint

    network = torch.nn.Linear(2, 1)
    handler = ResumeCheckpoint(tmp_path / "models" / "resume.pt", {"model": network}, resume=True)
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    checkpoint = torch.load(tmp_path / "models" / "resume.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 4
    torch.testing.assert_close(checkpoint["model"]["weight"], network.weight.detach())


def test_resume_flag_must_be_a_boolean(tmp_path: Path) -> None:
    from unet_monai.handlers import ResumeCheckpoint

    with pytest.raises(ValueError, match="resume must be true or false"):
        ResumeCheckpoint(tmp_path / "resume.pt", {"model": torch.nn.Linear(1, 1)}, resume="true")


def test_best_checkpoint_survives_a_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that breaks half-way (torch.save raising after some bytes, as on a full disk) leaves the
    previous model.pt whole and no temporary file (MONAI's CheckpointSaver deletes model.pt first)."""
    from ignite.engine import Engine

    from unet_monai.handlers import AtomicCheckpointSaver

    network = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(
        str(tmp_path),
        {"model": network},
        save_key_metric=True,
        key_metric_name="dice",
        key_metric_filename="model.pt",
    )
    engine = Engine(lambda engine, batch: None)
    saver.attach(engine)

    def validated(dice: float) -> None:
        engine.state.epoch += 1
        engine.state.metrics = {"dice": dice}
        saver.metrics_completed(engine)

    validated(0.5)
    first = (tmp_path / "model.pt").read_bytes()

    def broken_save(obj: object, file: object, **kwargs: object) -> None:
        file.write(b"half a checkpoint")
        raise OSError("No space left on device")

    torch.nn.init.constant_(network.weight, 3.0)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", broken_save)
        with pytest.raises(OSError, match="No space left"):
            validated(0.7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert (tmp_path / "model.pt").read_bytes() == first

    validated(0.9)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.testing.assert_close(saved["weight"], torch.full((1, 2), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
