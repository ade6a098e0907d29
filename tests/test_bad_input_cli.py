"""The command line's own faults: output folders, checkpoints, ranks, overrides, configs and exit codes.

Every case runs through the real CLI (``unet_monai.cli.main`` in-process) and must stop with one line
``error: <file, folder, variable or config key>: <problem>``, exit code 2, no traceback and nothing
written (issue 16). Random weights of the small axial network are enough: no case needs a good mask.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    AXIAL_ONLY,
    FAST_TRAIN,
    HIPPOCAMPUS,
    HIPPOCAMPUS_BUNDLE,
    REPO_ROOT,
    require,
    run_cli,
)
from unet_monai.bundle import load_workflow
from unet_monai.cli import main
from unet_monai.networks import axis_ensemble

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"network_def#features": 8, "members": AXIAL_ONLY["members"]}
SMALL_ARGS = ["--set", "network_def#features=8", "--set", "members=" + json.dumps(AXIAL_ONLY["members"])]
# Three slice directions (the bundle's own ensemble), each member tiny.
THREE = [
    {"slice_axis": 2, "roi_size": [48, 64], "epochs": 1},
    {"slice_axis": 0, "roi_size": [64, 48], "epochs": 1},
    {"slice_axis": 1, "roi_size": [48, 48], "epochs": 1},
]
THREE_ARGS = ["--set", "network_def#features=8", "--set", "members=" + json.dumps(THREE)]
THREE_ARGS += ["--set", "mirror_axes=[]"]


@pytest.fixture(autouse=True)
def _live_log_streams() -> None:
    """A bundle's logging.conf points the root logger at the sys.stdout of that moment, an earlier test's
    closed capture by now: point such handlers at the current one (as tests/test_bad_input.py does)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stdout


def assert_one_error(code: int, err: str, pattern: str, exit_code: int = 2) -> str:
    """Exit ``exit_code``; stderr holds exactly one ``error:`` line, matching ``pattern``; no traceback."""
    assert code == exit_code, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="module")
def network_state() -> dict[str, torch.Tensor]:
    """Seeded random weights of the small axial network."""
    torch.manual_seed(0)
    network = load_workflow(HIPPOCAMPUS_BUNDLE, "inference", **SMALL).parser.get_parsed_content("network_def")
    return network.state_dict()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, network_state: dict) -> Path:
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(network_state, path)
    return path


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A folder holding one real hippocampus volume."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(require(HIPPOCAMPUS / "imagesTr" / "hippocampus_001.nii.gz"), folder / "case.nii.gz")
    return folder


def infer(source: Path, output: Path, checkpoint: Path | str, *extra: str) -> list[str]:
    args = ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--input", str(source), "--output", str(output)]
    return [*args, "--checkpoint", str(checkpoint), *extra]


# --- 1. output folder equal to or inside the input folder --------------------------------------------


@pytest.mark.parametrize("inside", ["same", "below"])
def test_output_in_the_input_folder_is_refused(
    inside: str, volume: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = volume if inside == "same" else volume / "masks"
    code, _, err = run_cli(infer(volume, output, weights, *SMALL_ARGS), capsys)
    assert_one_error(code, err, rf"error: {re.escape(str(output))}: .*inside the input folder")
    assert files_in(volume) == ["case.nii.gz"]


# --- 2. an explicit --checkpoint loads only the members it names --------------------------------------


@pytest.fixture
def other_run(tmp_path: Path, network_state: dict) -> Path:
    """``my_run.pt`` beside the members 1 and 2 of another run."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("my_run.pt", "model_member1.pt", "model_member2.pt"):
        torch.save(network_state, folder / name)
    return folder


def test_one_checkpoint_for_an_ensemble_does_not_take_another_runs_members(
    other_run: Path, volume: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "masks"
    code, _, err = run_cli(infer(volume, output, other_run / "my_run.pt", *THREE_ARGS), capsys)
    line = assert_one_error(code, err, rf"error: {re.escape(str(other_run / 'my_run.pt'))}: ")
    assert "3 members" in line and "members 1, 2" in line and "--checkpoint" in line
    assert files_in(output) == []


def test_too_few_member_checkpoints_say_which_is_missing(
    other_run: Path, volume: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "masks"
    two = f"{other_run / 'my_run.pt'},{other_run / 'model_member1.pt'}"
    code, _, err = run_cli(infer(volume, output, two, *THREE_ARGS), capsys)
    line = assert_one_error(code, err, r"error: --checkpoint: 2 checkpoint\(s\) for an ensemble of 3 members")
    assert "member 2 (slice axis 1) is missing" in line
    assert files_in(output) == []


def test_every_member_named_or_one_file_holding_them_runs(
    other_run: Path, volume: Path, tmp_path: Path, network_state: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    named = [other_run / n for n in ("my_run.pt", "model_member1.pt", "model_member2.pt")]
    args = infer(volume, tmp_path / "a", named[0], "--checkpoint", f"{named[1]},{named[2]}", *THREE_ARGS)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err[-2000:]
    assert "case_seg.nii.gz" in files_in(tmp_path / "a")
    network = load_workflow(HIPPOCAMPUS_BUNDLE, "inference", **SMALL).parser.get_parsed_content("network_def")
    ensemble = axis_ensemble(network, [m["slice_axis"] for m in THREE])
    whole = tmp_path / "ensemble.pt"
    torch.save(ensemble.state_dict(), whole)
    code, _, err = run_cli(infer(volume, tmp_path / "b", whole, *THREE_ARGS), capsys)
    assert code == 0, err[-2000:]
    assert "case_seg.nii.gz" in files_in(tmp_path / "b")


def test_several_checkpoints_for_a_single_network_bundle_are_refused(
    weights: Path, volume: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["infer", "--bundle", str(REPO_ROOT / "bundles" / "hippocampus_unet3d"), "--input", str(volume)]
    args += ["--output", str(tmp_path / "m"), "--checkpoint", f"{weights},{weights}"]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, r"error: --checkpoint: 2 checkpoints given; .*one network")


# --- 3. torchrun ranks ----------------------------------------------------------------------------------

BAD_RANKS = [
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2: .*0 \.\. 1"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, r"RANK=-1: "),
    ({"RANK": "one", "WORLD_SIZE": "2"}, r"RANK='one': not an integer"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, r"WORLD_SIZE=0: "),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, r"LOCAL_RANK='x': not an integer"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, r"LOCAL_RANK=-1: "),
]


@pytest.mark.parametrize(("environ", "pattern"), BAD_RANKS)
def test_bad_rank_variables_are_one_line(
    environ: dict,
    pattern: str,
    volume: Path,
    weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    output = tmp_path / "masks"
    code, _, err = run_cli(infer(volume, output, weights, *SMALL_ARGS), capsys)
    assert_one_error(code, err, rf"^error: {pattern}")
    assert files_in(output) == []


def test_distributed_device_checks_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from unet_monai.distributed import distributed_device

    for value, pattern in (("x", "LOCAL_RANK='x': not an integer"), ("-2", "LOCAL_RANK=-2: ")):
        monkeypatch.setenv("LOCAL_RANK", value)
        with pytest.raises(ValueError, match=re.escape(pattern)):
            distributed_device()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"RANK=3: "):
        distributed_device()


# --- 4. override typos ---------------------------------------------------------------------------------


def train(tmp_path: Path, *extra: str) -> list[str]:
    args = ["train", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--data", str(tmp_path / "no_data_needed")]
    return [
        *args,
        "--set",
        f"ckpt_dir={tmp_path / 'models'}",
        "--set",
        f"output_dir={tmp_path / 'runs'}",
        *extra,
    ]


OVERRIDE_TYPOS = [
    ("learning_rat=0.5", r"error: learning_rat: no such config id .*did you mean learning_rate"),
    ("train#trainr#max_epochs=2", r"error: train#trainr#max_epochs: no such config id .*train#trainer"),
    ("train#trainer#max_epoch=2", r"error: train#trainer#max_epoch: no such config id .*max_epochs"),
    ("members#7#epochs=2", r"error: members#7#epochs: no such config id .*members#0"),
]


@pytest.mark.parametrize(("override", "pattern"), OVERRIDE_TYPOS)
def test_override_typos_are_refused(
    override: str, pattern: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(train(tmp_path, "--set", override), capsys)
    assert_one_error(code, err, pattern)
    assert files_in(tmp_path) == []


def test_override_typo_through_the_api_is_refused() -> None:
    with pytest.raises(KeyError, match="learning_rat: no such config id"):
        load_workflow(HIPPOCAMPUS_BUNDLE, "train", learning_rat=0.5)


def test_override_typo_on_infer_is_refused(
    volume: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "masks"
    code, _, err = run_cli(infer(volume, output, weights, *SMALL_ARGS, "--set", "neighbors=1"), capsys)
    assert_one_error(code, err, r"error: neighbors: no such config id .*neighbours")
    assert files_in(output) == []


# --- 5. tracebacks instead of one line -------------------------------------------------------------------


def test_symlink_loop_in_the_input_folder(
    volume: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (volume / "loop.nii.gz").symlink_to(volume / "loop.nii.gz")
    output = tmp_path / "masks"
    code, _, err = run_cli(infer(volume, output, weights, *SMALL_ARGS), capsys)
    assert_one_error(code, err, rf"error: {re.escape(str(volume / 'loop.nii.gz'))}: .*symbolic link loop")
    assert files_in(output) == []
    code, _, err = run_cli(infer(volume / "loop.nii.gz", output, weights, *SMALL_ARGS), capsys)
    assert_one_error(code, err, rf"error: {re.escape(str(volume / 'loop.nii.gz'))}: .*symbolic link loop")


def test_datalist_override_on_infer(
    volume: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "masks"
    extra = ["--set", "datalist=" + json.dumps([str(volume / "case.nii.gz")])]
    code, _, err = run_cli(infer(volume, output, weights, *SMALL_ARGS, *extra), capsys)
    assert_one_error(code, err, r"error: datalist: .*--input")
    assert files_in(output) == []


def test_non_numeric_override_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(train(tmp_path, "--set", "learning_rate=abc"), capsys)
    assert_one_error(code, err, r"error: learning_rate: expected a number .*got 'abc'")
    assert files_in(tmp_path) == []


def test_config_expression_error_names_the_key(
    volume: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "masks"
    extra = ["--set", "network_def#depth=$1 // 0"]
    code, _, err = run_cli(infer(volume, output, weights, *SMALL_ARGS, *extra), capsys)
    assert_one_error(code, err, r"error: network_def#depth: .*ZeroDivisionError")
    assert files_in(output) == []


def _malicious(path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, ("touch /tmp/unet_monai_pwned",))

    with path.open("wb") as stream:
        pickle.dump({"weight": Payload()}, stream)


BAD_CHECKPOINTS = {
    "truncated": (
        lambda p, good: p.write_bytes(good.read_bytes()[:2000]),
        r"not a readable PyTorch checkpoint",
    ),
    "garbage": (lambda p, good: p.write_bytes(os.urandom(4096)), r"not a readable PyTorch checkpoint"),
    "text": (lambda p, good: p.write_text("these are not weights\n"), r"not a readable PyTorch checkpoint"),
    "empty": (lambda p, good: p.write_bytes(b""), r"empty file"),
    "malicious": (lambda p, good: _malicious(p), r"refused: .*not only weights"),
    "not_a_dict": (lambda p, good: torch.save([1, 2, 3], p), r"holds a list, not a network's weights"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
@pytest.mark.parametrize("bundle", ["hippocampus_unet2d", "hippocampus_unet3d"])
def test_bad_checkpoint_is_one_line(
    case: str,
    bundle: str,
    volume: Path,
    weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make, problem = BAD_CHECKPOINTS[case]
    bad = tmp_path / f"{case}.pt"
    make(bad, weights)
    output = tmp_path / "masks"
    extra = SMALL_ARGS if bundle.endswith("2d") else ["--set", "network_def#features=4"]
    args = ["infer", "--bundle", str(REPO_ROOT / "bundles" / bundle), "--input", str(volume)]
    code, _, err = run_cli([*args, "--output", str(output), "--checkpoint", str(bad), *extra], capsys)
    assert_one_error(code, err, rf"error: {re.escape(str(bad))}: {problem}")
    assert files_in(output) == []
    assert not Path("/tmp/unet_monai_pwned").exists()


def test_checkpoint_of_another_network_says_what_differs(
    volume: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "masks"
    wider = [*SMALL_ARGS[:1], "network_def#features=16", *SMALL_ARGS[2:]]
    code, _, err = run_cli(infer(volume, output, weights, *wider), capsys)
    line = assert_one_error(
        code, err, rf"error: {re.escape(str(weights))}: checkpoint does not fit the network"
    )
    assert re.search(r"shape of \S+ is \[8, \d+, 3, 3\] in the file, \[16, \d+, 3, 3\] in the network", line)
    deeper = [*SMALL_ARGS, "--set", "network_def#depth=5"]
    code, _, err = run_cli(infer(volume, output, weights, *deeper), capsys)
    line = assert_one_error(code, err, r"checkpoint does not fit the network: \d+ missing keys? \(e\.g\. ")
    assert files_in(output) == []


def test_class_count_mismatch_is_one_line(
    volume: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "masks"
    code, _, err = run_cli(infer(volume, output, weights, *SMALL_ARGS, "--set", "num_classes=2"), capsys)
    line = assert_one_error(code, err, r"checkpoint does not fit the network")
    assert re.search(r"\[3, 8, 1, 1\] in the file, \[2, 8, 1, 1\] in the network", line), line
    assert files_in(output) == []


def test_malformed_config_json_names_the_file(
    volume: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(HIPPOCAMPUS_BUNDLE / "configs", bundle / "configs")
    config = bundle / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"num_classes": 3,', '"num_classes": 3'))
    args = ["infer", "--bundle", str(bundle), "--input", str(volume), "--output", str(tmp_path / "m")]
    code, _, err = run_cli([*args, "--checkpoint", str(weights), *SMALL_ARGS], capsys)
    assert_one_error(code, err, rf"error: {re.escape(str(config))}: malformed JSON \(line \d+")


# --- 6. exit codes and messages ------------------------------------------------------------------------


def test_missing_bundle_input_and_checkpoint_exit_2(
    volume: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "masks"
    args = ["infer", "--bundle", "bundles/nope", "--input", str(volume), "--output", str(output)]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, r"^error: bundles/nope: no such bundle \(no configs/inference\.json\)$")
    code, _, err = run_cli(["train", "--bundle", "bundles/nope"], capsys)
    assert_one_error(code, err, r"^error: bundles/nope: no such bundle \(no configs/train\.json\)$")
    code, _, err = run_cli(infer(tmp_path / "missing", output, weights, *SMALL_ARGS), capsys)
    assert_one_error(code, err, r"missing: no such file or folder")
    code, _, err = run_cli(infer(volume, output, tmp_path / "none.pt", *SMALL_ARGS), capsys)
    assert_one_error(code, err, r"none\.pt: no trained weights")
    assert not output.exists()


def test_out_of_memory_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import unet_monai.jobs as jobs

    def no_memory() -> int:
        raise MemoryError()

    monkeypatch.setattr(jobs, "networks", no_memory)
    code, _, err = run_cli(["networks"], capsys)
    assert_one_error(code, err, r"^error: out of memory \(MemoryError")


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="learning_rat"):
        main(["--debug", *train(tmp_path, "--set", "learning_rat=0.5")])
    monkeypatch.setenv("UNET_MONAI_DEBUG", "1")
    with pytest.raises(KeyError, match="learning_rat"):
        main(train(tmp_path, "--set", "learning_rat=0.5"))


def test_member_outside_the_ensemble_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--data", str(require(HIPPOCAMPUS))]
    args += ["--set", "member=3", "--set", f"ckpt_dir={tmp_path / 'models'}"]
    code, _, err = run_cli(args, capsys)
    assert_one_error(
        code, err, r"error: member: 3 is not a member of this ensemble \(0 \.\. 2: slice axes 2, 0, 1\)"
    )
    assert files_in(tmp_path) == []


def test_a_run_shorter_than_val_interval_still_validates_and_saves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "train",
        "--bundle",
        str(HIPPOCAMPUS_BUNDLE),
        "--data",
        str(require(HIPPOCAMPUS)),
        "--epochs",
        "1",
    ]
    args += ["--set", f"ckpt_dir={tmp_path / 'models'}", "--set", f"output_dir={tmp_path / 'runs'}"]
    settings = {**FAST_TRAIN, "val_interval": 5}
    settings.pop("train#trainer#max_epochs")
    args += [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert f"best checkpoint: {tmp_path / 'models' / 'model.pt'}" in out
    assert (tmp_path / "models" / "model.pt").is_file()
