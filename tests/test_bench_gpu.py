"""bench/bench_gpu.py runs every path (--smoke, on the CPU) and writes the JSON the GPU run will write;
the parts only a GPU would run (AMP settings, window devices, GPU-side caching) reach MONAI's objects.
No timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.transforms import Randomizable, ToDeviced

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench"
sys.path.insert(0, str(BENCH))

import bench_gpu  # noqa: E402

from unet_monai.bundle import load_workflow  # noqa: E402
from unet_monai.inference import volume_inferer  # noqa: E402
from unet_monai.transforms import build_train_transforms  # noqa: E402

BUNDLES = ["hippocampus_unet2d", "hippocampus_unet3d"]
GRID = [f"{p}{cl}" for p in ("fp32", "fp16", "bf16") for cl in ("", "_channels_last")]


def statuses(node: dict[str, Any], path: str = "") -> dict[str, str]:
    """Every measurement's status, by its dotted path."""
    if "status" in node:
        return {path: node["status"]}
    found: dict[str, str] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            found |= statuses(value, f"{path}.{key}" if path else key)
    return found


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``bench_gpu.py --smoke`` (every section, torch.compile with the eager backend) on one CPU thread."""
    output = tmp_path_factory.mktemp("gpu") / "gpu.json"
    command = [sys.executable, str(BENCH / "bench_gpu.py"), "--smoke", "--output", str(output)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()  # the bundles' own messages, then the JSON (its "{" alone on a line)
    printed = json.loads("\n".join(lines[max(i for i, line in enumerate(lines) if line == "{") :]))
    written = json.loads(output.read_text())
    assert printed["inference"] == written["inference"]
    return written


def test_smoke_measures_every_setting_or_says_why_not(smoke: dict[str, Any]) -> None:
    found = statuses({k: smoke[k] for k in ("inference", "training", "compile")})
    errors = {path: status for path, status in found.items() if status == "error"}
    assert not errors, errors
    for bundle in BUNDLES:
        assert set(smoke["inference"][bundle]["hippocampus"]) == set(GRID)
        assert set(smoke["inference"][bundle]["ct_grid"]) == set(GRID)
        assert set(smoke["inference"][bundle]["ct_bundle"]) == {"all_on_device", "stitch_on_cpu"}
        assert set(smoke["training"][bundle]) == {"cache", "gpu_cache", "gpu_cache_cudnn_benchmark"}
        assert set(smoke["compile"][bundle]) == {"inference", "training"}
    # on the CPU: float32 measured with channels-last off and on, AMP skipped with its reason
    assert found["inference.hippocampus_unet2d.hippocampus.fp32_channels_last"] == "ok"
    skipped = smoke["inference"]["hippocampus_unet3d"]["hippocampus"]["bf16"]
    assert skipped["status"] == "skipped" and "CUDA" in skipped["reason"]
    assert smoke["compile"]["hippocampus_unet2d"]["training"]["compiled"]["compile_backend"] == "eager"


def test_smoke_inference_entries(smoke: dict[str, Any]) -> None:
    for bundle in BUNDLES:
        entry = smoke["inference"][bundle]["hippocampus"]["fp32_channels_last"]
        assert entry["channels_last"] is True and entry["volumes"] == 1
        for key in ("volumes_per_s", "floor_volumes_per_s", "e2e_over_floor", "windows_per_volume"):
            assert entry[key] > 0, key
        assert entry["gpu_peak_allocated_mb"] is None  # no GPU: not measured, not made up
        assert set(entry["seconds"]) >= {
            "e2e",
            "load_preprocess",
            "inferer",
            "postprocess_invert_write",
            "floor",
        }
        stitched = smoke["inference"][bundle]["ct_bundle"]["stitch_on_cpu"]
        assert stitched["stitch_device"] == "cpu" and stitched["window_inferers_set"] >= 1
    # the 2D grid on the CT volume runs the axial member alone: one forward pass per batch of windows
    assert smoke["inference"]["hippocampus_unet2d"]["ct_grid"]["fp32"]["forward_calls_per_volume"] >= 1


def test_smoke_training_and_machine_entries(smoke: dict[str, Any]) -> None:
    for bundle in BUNDLES:
        for loader, entry in smoke["training"][bundle].items():
            assert entry["loader"] == loader
            for key in ("slices_per_s", "floor_slices_per_s", "step_over_floor"):
                assert entry[key] > 0, key
            assert 0 <= entry["data_wait_fraction"] <= 1
        # the bundle's set_determinism turns cuDNN autotuning off; the third loader turns it back on
        assert smoke["training"][bundle]["cache"]["flags"]["cudnn_deterministic"] is True
        assert smoke["training"][bundle]["gpu_cache_cudnn_benchmark"]["flags"]["cudnn_benchmark"] is True
        compiled = smoke["compile"][bundle]["inference"]["compiled"]
        assert compiled["speedup_vs_eager"] > 0
        assert set(compiled["networks"]) == {"CompiledNetwork"}  # in the workflow and in its floor
    machine = smoke["machine"]
    assert {"gpu", "torch", "cuda_runtime", "cudnn", "monai", "device", "default_flags"} <= set(machine)
    assert machine["device"] == "cpu" and machine["gpu"] is None
    assert smoke["data"]["source"] in {"msd-hippocampus", "synthetic"}
    assert smoke["settings"]["smoke"] is True


@pytest.mark.usefixtures("one_torch_thread")
def test_precision_overrides_reach_monai_engines(synthetic_dataset: Path, tmp_path: Path) -> None:
    inference = load_workflow(
        bench_gpu.BUNDLES["hippocampus_unet3d"],
        "inference",
        handlers=[],
        dataset_dir=str(synthetic_dataset / "imagesTr"),
        **bench_gpu.precision_overrides("bf16", "evaluator"),
    )
    inference.initialize()
    evaluator = inference.parser.get_parsed_content("evaluator")
    assert evaluator.amp is True and evaluator.amp_kwargs == {"dtype": torch.bfloat16}
    train = load_workflow(
        bench_gpu.BUNDLES["hippocampus_unet2d"],
        "train",
        dataset_dir=str(synthetic_dataset),
        bundle_root=str(tmp_path),
        **{"network_def#features": 4, "train#handlers": bench_gpu.PLAIN_BATCHES},
        **bench_gpu.precision_overrides("fp16", "train#trainer"),
    )
    train.initialize()
    trainer = train.parser.get_parsed_content("train#trainer")
    assert trainer.amp is True and trainer.amp_kwargs == {"dtype": torch.float16}
    assert bench_gpu.precision_overrides("fp32", "evaluator") == {"amp": False}


def test_window_devices_reach_every_monai_window_inferer() -> None:
    cpu, meta = torch.device("cpu"), torch.device("meta")
    ensemble = volume_inferer([[48, 64], [64, 48]], slice_axis=[2, 0], neighbours=2, mirror_axes=[0])
    assert bench_gpu.set_window_devices(ensemble, meta, cpu) == 2
    assert all(w.sw_device == meta and w.device == cpu for w in bench_gpu.window_inferers(ensemble))
    windows_3d = volume_inferer([32, 48, 32], slice_axis=None, mirror_axes=[0])
    assert bench_gpu.set_window_devices(windows_3d, meta, cpu) == 1
    assert isinstance(bench_gpu.window_inferers(windows_3d)[0], SlidingWindowInferer)
    with pytest.raises(ValueError, match="SimpleInferer holds no MONAI SlidingWindowInferer"):
        bench_gpu.set_window_devices(SimpleInferer(), meta, cpu)


def test_to_device_sits_between_the_cached_and_the_random_transforms() -> None:
    chain = build_train_transforms(slice_axis=2, neighbours=2, roi_size=(48, 64), flip_axes=[0])
    moved = bench_gpu.with_to_device(chain, ["image", "label"], torch.device("cpu")).transforms
    index = next(i for i, t in enumerate(moved) if isinstance(t, ToDeviced))
    assert not any(isinstance(t, Randomizable) for t in moved[:index])
    assert isinstance(moved[index + 1], Randomizable)
    assert len(moved) == len(chain.transforms) + 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, gpu_run.sh would run the benchmark")
@pytest.mark.skipif(shutil.which("bash") is None, reason="bench/gpu_run.sh needs bash")
def test_gpu_run_says_what_to_install_without_cuda() -> None:
    env = dict(os.environ, GPU_BENCH_PYTHON=sys.executable)
    env.pop("GPU_BENCH_ALLOW_CPU", None)
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_run.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode != 0
    assert "no Python here has a torch that sees a CUDA device" in done.stderr
    assert "Install a CUDA build of torch" in done.stderr
