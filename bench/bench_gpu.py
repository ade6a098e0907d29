"""GPU speed and memory of the hippocampus bundles (2D ensemble, 3D U-Net) against same-run floors.

Issue 7, part 3: the CPU benchmarks' comparisons on a CUDA machine, for ``bundles/hippocampus_unet2d``
and ``bundles/hippocampus_unet3d`` with untrained networks (random weights: speed does not depend on
them). Each figure is a ratio against a baseline measured in the same run:

- inference: volumes/s end to end through the bundle's own ``inference.json`` workflow (read NIfTI,
  preprocess, windows through the network, invert, write the mask) on hippocampus volumes and on a
  synthetic 512 x 512 x Z int16 CT volume, against the floor: the bare forward of the same networks on
  in-memory inputs of exactly the window shapes the workflow fed them (recorded by forward hooks), in
  float32, AMP fp16 and bf16, with channels-last off and on; GPU peak memory of each run; for the CT
  volume also MONAI's ``sw_device=cuda, device=cpu`` (windows on the GPU, stitched output on the CPU)
  against ``device=cuda``;
- training: slices/s of the bundle's ``SupervisedTrainer`` (AMP) fed by its ``CacheDataset``, and by
  MONAI's GPU-side caching (``ToDeviced`` after the deterministic transforms, random transforms on the
  GPU, ``ThreadDataLoader(num_workers=0)``, as MONAI's fast-training tutorial does), against the bare
  forward + backward + optimiser step on a batch already on the device;
- ``--compile``: the same with ``torch.compile`` of the networks.

Every measurement is recorded as ``ok``, ``skipped`` (with the reason: no CUDA for AMP, the time
budget spent) or ``error`` (with the message), and the JSON is rewritten after each one, so a run
stopped by a time limit still leaves what it measured. Prints a table, then JSON.

    python bench/bench_gpu.py                     # on a CUDA machine: about 5 minutes on an H100 / H200
    python bench/bench_gpu.py --smoke             # every code path on the CPU, tiny sizes (tests)
    bench/gpu_run.sh                              # the device machine's one-line entry (sets up, runs)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import monai
import torch
from bench_inference import AXIAL_ONLY, synthetic_ct
from ignite.engine import Events
from machine import emit_json, machine_info, rounded
from monai.data import CacheDataset, MetaTensor, ThreadDataLoader, get_track_meta, set_track_meta
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import Compose, Randomizable, ToDeviced

from unet_monai.bundle import load_workflow
from unet_monai.networks.ensemble import AxisEnsemble

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {
    "hippocampus_unet2d": REPO_ROOT / "bundles" / "hippocampus_unet2d",
    "hippocampus_unet3d": REPO_ROOT / "bundles" / "hippocampus_unet3d",
}
DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus"
OUTPUT = REPO_ROOT / "bench" / "results" / "gpu.json"
SECTIONS = ["inference", "training", "ct", "compile"]
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# --smoke: narrower networks and smaller batches so that every path runs in seconds on a CPU
SMOKE_OVERRIDES: dict[str, dict[str, Any]] = {
    "hippocampus_unet2d": {"network_def#features": 4, "members": AXIAL_ONLY["members"]},
    "hippocampus_unet3d": {"features": 4, "roi_size": [16, 16, 16]},
}
SMOKE_TRAINING: dict[str, Any] = {"batch_size": 2, "num_samples": 1}
PLAIN_BATCHES = [{"_target_": "unet_monai.handlers.PlainTensorBatches"}]


# ---------------------------------------------------------------- devices, flags, memory


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; timings need this)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cudnn_flags() -> dict[str, bool]:
    """The cuDNN / TF32 switches that decide convolution speed."""
    return {
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
    }


def set_cudnn_flags(flags: dict[str, bool]) -> None:
    """Restore the switches ``cudnn_flags`` returned (bundles set them: 2D inference turns benchmark on,
    training's ``set_determinism`` turns it off and determinism on)."""
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn_allow_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_allow_tf32"]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak GPU memory since ``reset_peak_memory`` (MB): allocated by tensors, reserved by the allocator."""
    if device.type != "cuda":
        return {"gpu_peak_allocated_mb": None, "gpu_peak_reserved_mb": None}
    return {
        "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
        "gpu_peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
    }


def release(device: torch.device) -> None:
    """Free what the last measurement left (its workflow, networks, cached blocks)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def gpu_info(device: torch.device) -> dict[str, Any]:
    """Device name, memory, compute capability, CUDA / cuDNN / torch / MONAI versions, driver."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "default_flags": cudnn_flags(),
    }
    if device.type != "cuda":
        return info | {"gpu": None}
    props = torch.cuda.get_device_properties(device)
    info |= {
        "gpu": props.name,
        "gpu_memory_gb": props.total_memory / 2**30,
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
    }
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        info["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def memory_format(spatial_dims: int) -> torch.memory_format:
    """Channels-last for 2D (NHWC) or 3D (NDHWC) convolutions."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def precision_overrides(precision: str, engine_id: str) -> dict[str, Any]:
    """Bundle overrides for a precision: ``amp`` and the engine's autocast dtype (MONAI autocasts on CUDA)."""
    if DTYPES[precision] is None:
        return {"amp": False}
    return {"amp": True, f"{engine_id}#amp_kwargs": {"dtype": f"$torch.{str(DTYPES[precision])[6:]}"}}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ---------------------------------------------------------------- networks inside a workflow


class ShapeRecorder:
    """Forward pre-hooks on networks: (network index, input shape) of every call while ``recording``."""

    def __init__(self, networks: Sequence[torch.nn.Module]) -> None:
        self.calls: list[tuple[int, tuple[int, ...]]] = []
        self.recording = False
        self.handles = [net.register_forward_pre_hook(self._hook(i)) for i, net in enumerate(networks)]

    def _hook(self, index: int) -> Callable[[torch.nn.Module, tuple[Any, ...]], None]:
        def hook(module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
            if self.recording:
                self.calls.append((index, tuple(inputs[0].shape)))

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class CompiledNetwork(torch.nn.Module):
    """``torch.compile`` of a network, fed plain tensors (MONAI's ``MetaTensor`` subclass breaks graphs,
    which is why MONAI's engines strip it too when their ``compile`` is on)."""

    def __init__(self, network: torch.nn.Module, backend: str) -> None:
        super().__init__()
        self.compiled = torch.compile(network, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.as_tensor() if isinstance(x, MetaTensor) else x
        # the last batch of windows of each volume differs in size: one graph for every batch size
        torch._dynamo.maybe_mark_dynamic(x, 0)
        return self.compiled(x)


def leaf_networks(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The networks that see windows: an ``AxisEnsemble``'s members, or the network itself."""
    return list(network.members) if isinstance(network, AxisEnsemble) else [network]


def compile_networks(network: torch.nn.Module, evaluator: Any, backend: str) -> list[torch.nn.Module]:
    """Compile the networks the evaluator's inferer calls (each ensemble member, or the network); them."""
    if isinstance(network, AxisEnsemble):
        for index, member in enumerate(network.members):
            network.members[index] = CompiledNetwork(member, backend)
        return list(network.members)
    evaluator.network = CompiledNetwork(network, backend)
    return [evaluator.network]


def window_inferers(inferer: Any) -> list[SlidingWindowInferer]:
    """MONAI's window inferers (``SliceInferer`` is one) inside a bundle's inferer, through the
    inferers and lists of inferers that wrap them (ensembles, test-time augmentation)."""
    found: list[SlidingWindowInferer] = []
    stack, seen = [inferer], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, SlidingWindowInferer):
            found.append(item)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, Inferer):
            stack.extend(vars(item).values())
    return found


def set_window_devices(inferer: Any, sw_device: torch.device, device: torch.device) -> int:
    """Set ``sw_device`` (windows, network) and ``device`` (stitched output) of every MONAI window
    inferer inside ``inferer``; how many. ``unet_monai.inference.volume_inferer`` takes no such arguments."""
    found = window_inferers(inferer)
    if not found:
        raise ValueError(
            f"{type(inferer).__name__} holds no MONAI SlidingWindowInferer: sw_device not settable"
        )
    for window_inferer in found:
        window_inferer.sw_device = sw_device
        window_inferer.device = device
    return len(found)


# ---------------------------------------------------------------- inference


def run_inference(
    bundle: str,
    files: list[str],
    work: Path,
    device: torch.device,
    precision: str,
    channels_last: bool,
    warmup: int,
    overrides: dict[str, Any],
    stitch_device: torch.device | None = None,
    compile_backend: str | None = None,
) -> dict[str, Any]:
    """The bundle's inference workflow on ``files`` (the first ``warmup`` untimed), then its floor.

    Returns volumes/s end to end and of the floor (the same networks on in-memory inputs of the
    recorded window shapes, same precision and memory format), where the time went, the GPU peak.
    """
    torch.manual_seed(0)
    workflow = load_workflow(
        BUNDLES[bundle],
        "inference",
        datalist=files,
        dataset_dir=str(Path(files[0]).parent),  # only printed: the datalist is given
        output_dir=str(work),
        handlers=[],  # no checkpoint (random weights), no progress bar
        device=f"$torch.device('{device}')",
        **precision_overrides(precision, "evaluator"),
        **overrides,
    )
    workflow.initialize()
    parser = workflow.parser
    evaluator = parser.get_parsed_content("evaluator")
    network = parser.get_parsed_content("network").eval()
    spatial_dims = int(parser.get_parsed_content("network_def#spatial_dims"))
    fmt = memory_format(spatial_dims) if channels_last else torch.contiguous_format
    network.to(memory_format=fmt)
    windows_on = None
    if stitch_device is not None:
        windows_on = set_window_devices(parser.get_parsed_content("inferer"), device, stitch_device)
    if compile_backend is None:
        leaves = leaf_networks(network)
    else:
        leaves = compile_networks(network, evaluator, compile_backend)
    recorder = ShapeRecorder(leaves)
    flags = cudnn_flags()
    marks: list[dict[str, float]] = []

    def mark(name: str) -> Callable[[Any], None]:
        def handler(engine: Any) -> None:
            if name == "start":
                marks.append({})
                recorder.recording = engine.state.iteration >= warmup  # 0 before the first batch
            elif name in ("forward", "end"):
                sync(device)
            marks[-1][name] = time.perf_counter()

        return handler

    evaluator.add_event_handler(Events.GET_BATCH_STARTED, mark("start"))
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, mark("loaded"))
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, mark("forward"))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, mark("end"))
    reset_peak_memory(device)
    with torch.inference_mode():
        workflow.run()
    workflow.finalize()
    memory = peak_memory(device)
    recorder.recording = False
    recorder.remove()
    timed = [m for m in marks[warmup:] if "end" in m]  # the last mark is the end of data
    if not timed:
        raise ValueError(f"{len(files)} volume(s) with {warmup} warm-up: nothing timed")
    total = sum(m["end"] - m["start"] for m in timed)
    floor = bare_forward(leaves, recorder.calls, device, precision, fmt)
    windows = sum(shape[0] for _, shape in recorder.calls)
    return {
        "precision": precision,
        "channels_last": channels_last,
        "device": str(device),
        "sw_device": str(device),
        "stitch_device": str(stitch_device or device),
        "window_inferers_set": windows_on,
        "compile_backend": compile_backend,
        "networks": [type(leaf).__name__ for leaf in leaves],  # what the floor ran too
        "volumes": len(timed),
        "volumes_per_s": len(timed) / total,
        "floor_volumes_per_s": len(timed) / floor,
        "e2e_over_floor": total / floor,
        "windows_per_volume": windows / len(timed),
        "forward_calls_per_volume": len(recorder.calls) / len(timed),
        "seconds": {
            "e2e": total,
            "load_preprocess": sum(m["loaded"] - m["start"] for m in timed),
            "inferer": sum(m["forward"] - m["loaded"] for m in timed),
            "postprocess_invert_write": sum(m["end"] - m["forward"] for m in timed),
            "floor": floor,
        },
        "flags": flags,
    } | memory


def bare_forward(
    networks: Sequence[torch.nn.Module],
    calls: Sequence[tuple[int, tuple[int, ...]]],
    device: torch.device,
    precision: str,
    fmt: torch.memory_format,
) -> float:
    """Seconds for the networks' forward on in-memory inputs of the recorded shapes (the floor).

    One random input per distinct shape (the content does not change the speed; all of them at once
    would not fit for a CT volume), each (network, shape) run once untimed first (cuDNN autotuning)."""
    if not calls:
        raise ValueError("no forward calls were recorded")
    with torch.inference_mode(), autocast(device, precision):
        # inference tensors, as in the workflow (other tensors would recompile a compiled network)
        inputs = {
            shape: torch.randn(shape, device=device).contiguous(memory_format=fmt)
            for shape in {shape for _, shape in calls}
        }
        for index, shape in set(calls):
            networks[index](inputs[shape])
        sync(device)
        start = time.perf_counter()
        for index, shape in calls:
            networks[index](inputs[shape])
        sync(device)
        return time.perf_counter() - start


# ---------------------------------------------------------------- training


def with_to_device(chain: Compose, keys: Sequence[str], device: torch.device) -> Compose:
    """``chain`` with ``ToDeviced`` before its first random transform: ``CacheDataset`` then caches the
    deterministic part on the device and the random transforms run there (MONAI's fast training)."""
    transforms = list(chain.transforms)
    first_random = next((i for i, t in enumerate(transforms) if isinstance(t, Randomizable)), len(transforms))
    to_device = ToDeviced(keys=list(keys), device=device)
    return Compose([*transforms[:first_random], to_device, *transforms[first_random:]])


def run_training(
    bundle: str,
    data_dir: Path,
    work: Path,
    device: torch.device,
    precision: str,
    loader: str,
    cases: int,
    epochs: int,
    warmup: int,
    overrides: dict[str, Any],
    compile_backend: str | None = None,
) -> dict[str, Any]:
    """The bundle's ``SupervisedTrainer`` for ``epochs`` epochs, timed after ``warmup`` iterations, then
    the bare step (the floor) on a batch of the same shape already on the device.

    ``loader``: "cache" (the bundle's ``CacheDataset`` + ``DataLoader``), "gpu_cache" (deterministic
    transforms cached on the device, random ones there, ``ThreadDataLoader(num_workers=0)``, MONAI
    metadata tracking off as in MONAI's fast-training tutorial), or "gpu_cache_cudnn_benchmark" (the
    same with cuDNN autotuning on instead of the bundle's ``set_determinism``).
    """
    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "dataset_dir": str(data_dir),
        "bundle_root": str(work),
        "num_cases": cases,
        "device": f"$torch.device('{device}')",
        "cpu_bf16": False,  # the CPU's bf16 inferer: off, precision is set here
        "train#trainer#max_epochs": epochs,
        "train#handlers": PLAIN_BATCHES,  # no validation, logging, LR schedule or checkpoints
    }
    if compile_backend is not None:
        settings |= {
            "train#trainer#compile": True,
            "train#trainer#compile_kwargs": {"backend": compile_backend},
        }
    workflow = load_workflow(
        BUNDLES[bundle], "train", **settings, **precision_overrides(precision, "train#trainer"), **overrides
    )
    workflow.initialize()  # the bundle's set_determinism runs here
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    track_meta = get_track_meta()
    if loader.startswith("gpu_cache"):
        chain = with_to_device(parser.get_parsed_content("train#preprocessing"), ["image", "label"], device)
        dataset = CacheDataset(
            parser.get_parsed_content("split")[0],
            chain,
            cache_rate=1.0,
            num_workers=parser.get_parsed_content("train#dataset#num_workers"),
            copy_cache=False,  # the random transforms make new tensors; the cache is never written
            progress=False,
        )
        batch_size = parser.get_parsed_content("batch_size")
        trainer.data_loader = ThreadDataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
        set_track_meta(False)
    if loader == "gpu_cache_cudnn_benchmark":
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    flags = cudnn_flags()
    marks: list[dict[str, float]] = []
    batch_shape: list[int] = []
    window: dict[str, float] = {}

    def started(engine: Any) -> None:
        marks.append({"start": time.perf_counter()})

    def drawn(engine: Any) -> None:
        marks[-1]["data"] = time.perf_counter()
        marks[-1]["slices"] = int(engine.state.batch["image"].shape[0])
        batch_shape[:] = list(engine.state.batch["image"].shape)

    def completed(engine: Any) -> None:
        if engine.state.iteration == warmup:
            sync(device)
            window["start"] = time.perf_counter()

    def finished(engine: Any) -> None:
        sync(device)
        window["end"] = time.perf_counter()

    trainer.add_event_handler(Events.GET_BATCH_STARTED, started)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, drawn)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, completed)
    trainer.add_event_handler(Events.COMPLETED, finished)
    reset_peak_memory(device)
    try:
        workflow.run()
    finally:
        set_track_meta(track_meta)
    workflow.finalize()
    memory = peak_memory(device)
    timed = [m for m in marks[warmup:] if "data" in m]
    if not timed or "start" not in window:
        raise ValueError(f"{len(marks)} iterations: need more than the {warmup} warm-up ones")
    seconds = window["end"] - window["start"]
    slices = sum(m["slices"] for m in timed)
    data_seconds = sum(m["data"] - m["start"] for m in timed)
    num_classes = int(parser.get_parsed_content("num_classes"))
    floor = bare_steps(trainer, batch_shape, num_classes, device, precision, len(timed))
    return {
        "loader": loader,
        "precision": precision,
        "compile_backend": compile_backend,
        "batch_shape": batch_shape,
        "timed_iterations": len(timed),
        "slices_per_s": slices / seconds,
        "floor_slices_per_s": batch_shape[0] / floor,
        "step_over_floor": (seconds / len(timed)) / floor,
        "data_wait_fraction": data_seconds / seconds,
        "seconds_per_step": {
            "bundle": seconds / len(timed),
            "data_wait": data_seconds / len(timed),
            "floor": floor,
        },
        "flags": flags,
    } | memory


def bare_steps(
    trainer: Any,
    batch_shape: list[int],
    num_classes: int,
    device: torch.device,
    precision: str,
    iterations: int,
) -> float:
    """Seconds per step of the trainer's own network, loss and optimiser on a batch already on the
    device: autocast and ``GradScaler`` as MONAI's ``SupervisedTrainer`` uses them with ``amp``."""
    network, loss, optimizer = trainer.network, trainer.loss_function, trainer.optimizer
    image = torch.randn(batch_shape, device=device)
    label = torch.randint(0, num_classes, (batch_shape[0], 1, *batch_shape[2:]), device=device).float()
    scaler = torch.amp.GradScaler(device.type) if DTYPES[precision] is not None else None

    def step() -> None:
        network.train()
        optimizer.zero_grad(set_to_none=trainer.optim_set_to_none)
        with autocast(device, precision):
            value = loss(network(image), label).mean()
        if scaler is None:
            value.backward()
            optimizer.step()
        else:
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()

    for _ in range(min(3, iterations)):  # warm-up (cuDNN autotuning, compilation)
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    sync(device)
    return (time.perf_counter() - start) / iterations


# ---------------------------------------------------------------- the run


class Recorder:
    """Runs measurements into a nested result, skipping them once the time budget is spent, catching
    each one's error (one failed setting must not lose a whole device run), rewriting the JSON after each."""

    def __init__(self, result: dict[str, Any], output: Path, budget_s: float, device: torch.device) -> None:
        self.result = result
        self.output = output
        self.budget_s = budget_s
        self.device = device
        self.start = time.perf_counter()
        self.defaults = cudnn_flags()

    def put(self, path: Sequence[str], value: dict[str, Any]) -> None:
        node = self.result
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        self.write()

    def get(self, path: Sequence[str]) -> dict[str, Any]:
        """The entry at ``path``, or an empty dict."""
        node: Any = self.result
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        return node

    def compare(self, path: Sequence[str], reference: Sequence[str]) -> None:
        """Add to the entry at ``path`` its rate over the rate of the entry at ``reference``."""
        entry, base = self.get(path), self.get(reference)
        if entry.get("status") == "ok" and base.get("status") == "ok":
            key = "volumes_per_s" if "volumes_per_s" in entry else "slices_per_s"
            entry["speedup_vs_eager"] = entry[key] / base[key]
            entry["eager_reference"] = ".".join(reference)
            self.write()

    def skip(self, path: Sequence[str], reason: str) -> None:
        self.put(path, {"status": "skipped", "reason": reason})

    def measure(self, path: Sequence[str], work: Callable[[], dict[str, Any]]) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget_s:
            self.skip(path, f"time budget spent ({elapsed:.0f} s of --budget-s {self.budget_s:.0f})")
            return
        print(f"== {'.'.join(path)} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
        set_cudnn_flags(self.defaults)  # each bundle runs with its own settings, whatever ran before
        started = time.perf_counter()
        try:
            value = {"status": "ok"} | work()
        except Exception as error:  # noqa: BLE001 - recorded in the JSON with its message
            traceback.print_exc()
            value = {"status": "error", "error": f"{type(error).__name__}: {error}"[:2000]}
        value["wall_s"] = time.perf_counter() - started
        set_cudnn_flags(self.defaults)
        release(self.device)
        self.put(path, value)

    def write(self) -> None:
        self.result["wall_seconds"] = time.perf_counter() - self.start
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text(json.dumps(rounded(self.result), indent=2) + "\n")


def resolve_data(requested: str, work: Path, cases: int) -> tuple[Path, dict[str, Any]]:
    """The MSD-layout hippocampus folder, or seeded synthetic volumes when it is absent (recorded)."""
    path = Path(requested)
    if (path / "dataset.json").is_file() and (path / "imagesTr").is_dir():
        return path, {"source": "msd-hippocampus", "dir": str(path)}
    from unet_monai.data import make_synthetic_dataset

    synthetic = make_synthetic_dataset(work / "synthetic", num_cases=cases, seed=0)
    reason = f"{path}: no MSD hippocampus folder (dataset.json, imagesTr/); seeded synthetic volumes instead"
    print(f"warning: {reason}", file=sys.stderr)
    return synthetic, {"source": "synthetic", "dir": str(synthetic), "reason": reason}


def precision_grid(device: torch.device) -> list[tuple[str, str, bool, str | None]]:
    """(key, precision, channels_last, skip reason) for fp32 / fp16 / bf16 with channels-last off and on."""
    grid = []
    for precision in DTYPES:
        reason = None
        if device.type != "cuda" and DTYPES[precision] is not None:
            reason = f"{device.type} device: MONAI's engines autocast (amp) on CUDA only"
        elif precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            reason = "this GPU has no native bfloat16"
        for channels_last in (False, True):
            key = precision + ("_channels_last" if channels_last else "")
            grid.append((key, precision, channels_last, reason))
    return grid


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every code path, tiny sizes, CPU (tests)")
    parser.add_argument("--device", help="cuda (default where available) or cpu")
    parser.add_argument("--data", default=str(DATA), help="MSD hippocampus folder (else synthetic volumes)")
    parser.add_argument("--bundles", nargs="+", choices=sorted(BUNDLES), default=sorted(BUNDLES))
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        help="what to measure (default: all but compile; with --smoke: all)",
    )
    parser.add_argument("--volumes", type=int, default=20, help="timed hippocampus volumes per setting")
    parser.add_argument("--warmup-volumes", type=int, default=2, help="untimed volumes before them")
    parser.add_argument("--ct-depth", type=int, default=300, help="slices of the 512 x 512 CT volume")
    parser.add_argument("--cases", type=int, default=40, help="training cases (80 %% train, 4 per batch)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of each trainer run")
    parser.add_argument("--warmup-iterations", type=int, default=8, help="untimed training iterations")
    parser.add_argument("--compile", action="store_true", help="add the compile section (torch.compile)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what would start after this")
    parser.add_argument("--output", default=str(OUTPUT), help="the JSON (rewritten after each measurement)")
    args = parser.parse_args(argv)
    args.sections = list(args.sections or (SECTIONS if args.smoke else SECTIONS[:3]))
    if args.compile and "compile" not in args.sections:
        args.sections.append("compile")
    ct_shape, slab_shape = (512, 512, args.ct_depth), (512, 512, 4)
    if args.smoke:
        args.device = args.device or "cpu"
        args.volumes, args.warmup_volumes, args.cases, args.epochs, args.warmup_iterations = 1, 1, 5, 2, 1
        ct_shape, slab_shape = (64, 64, 3), (64, 64, 2)
        if "compile" in args.sections:
            args.compile_backend = "eager"  # the code path without minutes of code generation
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    networks = SMOKE_OVERRIDES if args.smoke else {name: {} for name in BUNDLES}
    training = SMOKE_TRAINING if args.smoke else {}

    result: dict[str, Any] = {
        "machine": machine_info() | gpu_info(device),
        "settings": vars(args) | {"ct_shape": list(ct_shape), "ct_warmup_shape": list(slab_shape)},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if device.type != "cuda":
        result["settings"]["note"] = "no CUDA device: GPU memory not measured (null), fp16 / bf16 skipped"
    recorder = Recorder(result, Path(args.output), args.budget_s, device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir, result["data"] = resolve_data(
            args.data, work, max(args.cases, args.warmup_volumes + args.volumes)
        )
        files = sorted(str(p) for p in (data_dir / "imagesTr").glob("*.nii*"))
        files = files[: args.warmup_volumes + args.volumes]
        recorder.write()

        @cache
        def ct_files() -> list[str]:
            """The CT-sized volume, after a thin slab of the same plane as its warm-up (untimed)."""
            paths = [work / "ct_warmup.nii", work / "ct.nii"]
            for path, shape in zip(paths, [slab_shape, ct_shape], strict=True):
                synthetic_ct(path, shape)
            return [str(p) for p in paths]

        grid = precision_grid(device)
        default_precision = "fp16" if device.type == "cuda" else "fp32"  # the bundles' amp on CUDA

        def infer(
            bundle: str, volumes: Callable[[], list[str]], warmup: int, **kw: Any
        ) -> Callable[[], dict]:
            overrides = networks[bundle] | kw.pop("extra", {})

            def work_fn() -> dict[str, Any]:
                out = work / f"out_{time.monotonic_ns()}"
                return run_inference(bundle, volumes(), out, device, warmup=warmup, overrides=overrides, **kw)

            return work_fn

        def train(bundle: str, loader: str, **kw: Any) -> Callable[[], dict]:
            def work_fn() -> dict[str, Any]:
                out = work / f"train_{time.monotonic_ns()}"
                return run_training(
                    bundle, data_dir, out, device, default_precision, loader, args.cases, args.epochs,
                    args.warmup_iterations, networks[bundle] | training, **kw,
                )  # fmt: skip

            return work_fn

        # most telling first: a time limit then cuts the least important
        if "inference" in args.sections:
            for bundle in args.bundles:
                for key, precision, channels_last, reason in grid:
                    path = ["inference", bundle, "hippocampus", key]
                    if reason:
                        recorder.skip(path, reason)
                        continue
                    recorder.measure(
                        path,
                        infer(
                            bundle, lambda: files, args.warmup_volumes, precision=precision,
                            channels_last=channels_last,
                        ),
                    )  # fmt: skip
        if "training" in args.sections:
            for bundle in args.bundles:
                for loader in ("cache", "gpu_cache", "gpu_cache_cudnn_benchmark"):
                    recorder.measure(["training", bundle, loader], train(bundle, loader))
        if "ct" in args.sections:
            cpu = torch.device("cpu")
            for bundle in args.bundles:
                for key, stitch in (("all_on_device", None), ("stitch_on_cpu", cpu)):
                    recorder.measure(
                        ["inference", bundle, "ct_bundle", key],
                        infer(
                            bundle, ct_files, 1, precision=default_precision, channels_last=True,
                            stitch_device=stitch,
                        ),
                    )  # fmt: skip
            for bundle in args.bundles:
                # the 2D ensemble's sagittal and coronal members slice a 512 x 512 plane 512 times each:
                # the grid runs its axial member alone, without TTA (as bench_inference does on CPU)
                extra = AXIAL_ONLY if bundle == "hippocampus_unet2d" else {}
                for key, precision, channels_last, reason in grid:
                    path = ["inference", bundle, "ct_grid", key]
                    if reason:
                        recorder.skip(path, reason)
                        continue
                    recorder.measure(
                        path,
                        infer(
                            bundle, ct_files, 1, precision=precision, channels_last=channels_last,
                            extra=extra,
                        ),
                    )  # fmt: skip
        if "compile" in args.sections:
            for bundle in args.bundles:
                references = {
                    "inference": ["inference", bundle, "hippocampus", default_precision],
                    "training": ["training", bundle, "gpu_cache"],
                }
                measures = {
                    "inference": lambda backend, bundle=bundle: infer(
                        bundle, lambda: files, args.warmup_volumes, precision=default_precision,
                        channels_last=False, compile_backend=backend,
                    ),
                    "training": lambda backend, bundle=bundle: train(
                        bundle, "gpu_cache", compile_backend=backend
                    ),
                }  # fmt: skip
                for kind, reference in references.items():
                    if recorder.get(reference).get("status") != "ok":  # not measured in this run
                        reference = ["compile", bundle, kind, "eager"]
                        recorder.measure(reference, measures[kind](None))
                    compiled = ["compile", bundle, kind, "compiled"]
                    recorder.measure(compiled, measures[kind](args.compile_backend))
                    recorder.compare(compiled, reference)
        else:
            recorder.skip(["compile"], "not asked for (--compile or --sections compile)")
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = rounded(result)
    print_table(result)
    recorder.result = result
    recorder.write()
    emit_json(result, None)
    return result


def print_table(result: dict[str, Any]) -> None:
    """A short table (stderr; stdout stays JSON): each setting's volumes/s or slices/s, floor, GPU peak."""
    machine = result["machine"]
    print(f"\n{machine.get('gpu') or machine['device']}  torch {machine['torch']}", file=sys.stderr)
    header = f"{'measurement':<58} {'rate':>9} {'floor':>9} {'/floor':>7} {'GPU MB':>8}"
    print(header, file=sys.stderr)

    def rows(node: dict[str, Any], path: list[str]) -> None:
        if "status" in node:
            name = ".".join(path)
            if node["status"] != "ok":
                print(
                    f"{name:<58} {node['status']}: {node.get('reason') or node.get('error')}", file=sys.stderr
                )
                return
            rate = node.get("volumes_per_s", node.get("slices_per_s"))
            floor = node.get("floor_volumes_per_s", node.get("floor_slices_per_s"))
            ratio = node.get("e2e_over_floor", node.get("step_over_floor"))
            peak = node.get("gpu_peak_allocated_mb")
            peak_text = "-" if peak is None else f"{peak:.0f}"
            print(f"{name:<58} {rate:>9.4g} {floor:>9.4g} {ratio:>7.3f} {peak_text:>8}", file=sys.stderr)
            return
        for key, value in node.items():
            if isinstance(value, dict):
                rows(value, [*path, key])

    for section in ("inference", "training", "compile"):
        if isinstance(result.get(section), dict):
            rows(result[section], [section])
    print("rate: volumes/s (inference) or slices/s (training)", file=sys.stderr)


if __name__ == "__main__":
    main()
