"""Multi-GPU training configs: ``torchrun`` with two CPU processes on Gloo trains the hippocampus bundle with
DistributedDataParallel, and every bundle's ``multi_gpu_train.json`` fits its ``train.json``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser

from tests.conftest import HIPPOCAMPUS_BUNDLE, REPO_ROOT

BUNDLES = sorted(p.parent.parent for p in (REPO_ROOT / "bundles").glob("*/configs/multi_gpu_train.json"))


def _configs(bundle: Path) -> list[str]:
    return [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")]


def _references(value: object) -> set[str]:
    """The config ids a config value refers to (``@id``)."""
    if isinstance(value, dict):
        return set().union(*(_references(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value))
    if isinstance(value, str):
        return set(re.findall(r"@([\w#]+)", value))
    return set()


def test_every_bundle_has_a_multi_gpu_config() -> None:
    assert {b.name for b in BUNDLES} == {
        p.parent.parent.name for p in (REPO_ROOT / "bundles").glob("*/configs/train.json")
    }


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_multi_gpu_config_overrides_ids_of_its_train_config(bundle: Path) -> None:
    train = ConfigParser()
    train.read_config(_configs(bundle)[0])
    overrides = ConfigParser.load_config_file(_configs(bundle)[1])
    merged = ConfigParser()
    merged.read_config(_configs(bundle))
    for key, value in overrides.items():
        parent = key.rpartition("#")[0]
        # an override replaces an id of train.json, adds one to a block that exists there, or is the
        # workflow's "finalize" section
        assert key in train or key == "finalize" or (parent and parent in train), (
            f"{bundle.name}: {key} matches nothing in train.json"
        )
        for reference in _references(value):
            assert reference in merged, f"{bundle.name}: {key} refers to @{reference}, which is not defined"
    assert merged["train#dataloader#sampler"] == "@train#sampler"
    assert merged["validate#dataloader#sampler"] == "@validate#sampler"
    assert merged.get("train#dataloader#shuffle", False) is False
    assert merged["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"


@pytest.fixture(scope="module")
def one_process_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-process Gloo group in this test process (``LOCAL_RANK`` 0, as ``torchrun`` sets it)."""
    if not dist.is_gloo_available():
        pytest.skip("torch.distributed has no Gloo backend in this build")
    if dist.is_initialized():
        pytest.skip("a process group is already running in this test process")
    environment = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    store = tmp_path_factory.mktemp("process_group") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_multi_gpu_config_builds_a_distributed_network(
    bundle: Path, one_process_group: None, one_torch_thread: None
) -> None:
    parser = ConfigParser()
    parser.read_config(_configs(bundle))
    parser["bundle_root"] = str(bundle)
    device = parser.get_parsed_content("device")
    assert device == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    network = parser.get_parsed_content("network")
    assert isinstance(network, torch.nn.parallel.DistributedDataParallel)


def test_distributed_device_outside_torchrun_says_how_to_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    from unet_monai.distributed import distributed_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(RuntimeError, match="runs under torchrun"):
        distributed_device()


def test_torchrun_two_cpu_processes_train_one_model(tmp_path: Path) -> None:
    """Two Gloo ranks: each trains on its own half of the cases, DDP keeps their weights equal, and only
    rank 0 writes checkpoints (each rank is given its own checkpoint folder to show it)."""
    if not dist.is_gloo_available():
        pytest.skip("torch.distributed has no Gloo backend in this build")
    from unet_monai.data import make_synthetic_dataset

    # 10 cases: 8 for training (4 per rank), 2 for validation (1 per rank)
    dataset = make_synthetic_dataset(tmp_path / "data", num_cases=10, seed=3)
    overrides = {
        "dataset_dir": str(dataset),
        "ckpt_dir": f"$'{tmp_path}/models_rank' + os.environ['RANK']",
        "output_dir": f"$'{tmp_path}/runs_rank' + os.environ['RANK']",
        "members": [{"slice_axis": 2, "roi_size": [48, 64], "epochs": 2}],
        "val_interval": 1,
        "num_samples": 4,
        "batch_size": 2,
        "network_def#features": 8,
        "finalize": [
            "$print('rank', torch.distributed.get_rank(), 'items', sorted(@train#sampler), 'parameter sum', "
            "repr(float(sum(p.detach().double().sum() for p in @network.parameters()))))",
            "$torch.distributed.barrier()",
            "$torch.distributed.destroy_process_group()",
        ],
    }
    # each rank's output in its own files (LOG_DIR/<run>/attempt_0/<rank>/stdout.log): no interleaved lines
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["--log-dir", str(logs), "--redirects", "3"]
    command += ["-m", "monai.bundle", "run", "--config_file", str(_configs(HIPPOCAMPUS_BUNDLE))]
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value)]
    environment = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=environment, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    finals = {}
    for rank in (0, 1):
        files = sorted(logs.glob(f"**/{rank}/std*.log"))
        assert files, f"no output of rank {rank} under {logs}"
        text = "".join(f.read_text() for f in files)
        expected = f"rank {rank} of 2 ( gloo , device cpu ): 4 of 8 training items, 1 of 2 validation items"
        assert expected in text, text[-3000:]
        found = re.findall(rf"rank {rank} items (\[[\d, ]*\]) parameter sum ([-\d.e]+)", text)
        assert len(found) == 1, text[-3000:]
        finals[rank] = (json.loads(found[0][0]), found[0][1])
    (items0, sum0), (items1, sum1) = finals[0], finals[1]
    assert len(items0) == len(items1) == 4 and sorted(items0 + items1) == list(range(8))
    assert sum0 == sum1  # gradients averaged by DDP: the same weights on both ranks

    assert sorted(p.name for p in (tmp_path / "models_rank0").iterdir()) == ["model.pt", "resume.pt"]
    assert not (tmp_path / "models_rank1").exists()
    checkpoint = torch.load(tmp_path / "models_rank0" / "resume.pt", map_location="cpu", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 2 * checkpoint["trainer"]["epoch_length"] == 2 * 2
    assert not any(key.startswith("module.") for key in checkpoint["model"])

    # Resuming needs the same checkpoint on every rank: rank 1's folder has none, and the run says so.
    resumed = subprocess.run(
        command + ["--resume", "True"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert resumed.returncode != 0
    logged = "".join(f.read_text() for f in logs.glob("**/std*.log"))
    assert "resume.pt: the resume checkpoint is visible to ranks [0] only" in logged
