"""Whole-volume inference speed of the hippocampus bundle against baselines measured in the same run.

End to end (read NIfTI, preprocess, slice-wise forward of the ensemble with mirror TTA, invert, write the
mask) through the bundle's own ``inference.json`` workflow, with an untrained network (random weights:
speed does not depend on them), compared with:

- floor: the bare forward of the same members on windows of exactly the shapes the workflow fed them
  (recorded by forward hooks during the timed run), already in memory;
- naive: a loop that reads each volume with nibabel and infers one slice at a time (batch 1) for each
  member and mirror, as the seed projects did (hippocampus folder only: there a slice is one window);
- MONAI default: the same workflow with MONAI's ``SliceInferer`` default settings (``sw_batch_size=1``,
  ``mode="constant"``) instead of the bundle's (64 windows per forward, Gaussian blending).

Also a synthetic CT-sized volume (512 x 512 x Z). ``--quick`` (``--axial-only``): the hippocampus
comparisons with the bundle's axial member alone, without TTA, plus the whole bundle against its floor
on ``--ensemble-volumes`` volumes. Prints a table, then JSON.

    python bench/bench_inference.py --quick
    python bench/bench_inference.py --volumes 40 --ct-depth 300 --output bench/results/inference.json
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Events
from machine import emit_json, machine_info, rounded
from monai.engines.utils import IterationEvents

from unet_monai.bundle import load_workflow, parse_override
from unet_monai.inference import BFloat16Inferer
from unet_monai.networks.ensemble import AxisEnsemble
from unet_monai.transforms.slices import stack_neighbour_slices

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus" / "imagesTr"
# The bundle's axial member alone, without mirror TTA (bundle overrides): 1/7 of its windows.
AXIAL_ONLY: dict[str, Any] = {
    "members": [{"slice_axis": 2, "roi_size": [48, 64], "epochs": 45}],
    "mirror_axes": [],
}


class ForwardTimer:
    """Forward hooks on the ensemble's members: seconds spent in the network and the input shapes seen."""

    def __init__(self, ensemble: AxisEnsemble) -> None:
        self.seconds = 0.0
        self.calls: list[tuple[int, tuple[int, ...]]] = []
        self.recording = False
        self._start = 0.0
        for index, member in enumerate(ensemble.members):
            member.register_forward_pre_hook(self._pre(index))
            member.register_forward_hook(self._post)

    def _pre(self, index: int):
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if self.recording:
                self.calls.append((index, tuple(inputs[0].shape)))
            self._start = time.perf_counter()

        return hook

    def _post(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if self.recording:
            self.seconds += time.perf_counter() - self._start


def run_bundle(
    files: list[str], output_dir: Path, overrides: dict[str, Any], warmup: bool = True
) -> dict[str, Any]:
    """Run the bundle's inference workflow on ``[files[0]] + files`` (the first, a warm-up, is not timed),
    or on ``files`` all timed when not ``warmup``.

    Returns seconds per timed volume, split into load+preprocess, inferer (of which network forward)
    and postprocessing (softmax, invert, argmax, largest component, write), and the forward shapes.
    """
    torch.manual_seed(0)
    workflow = load_workflow(
        BUNDLE,
        "inference",
        datalist=[files[0], *files] if warmup else files,
        output_dir=str(output_dir),
        handlers=[],  # no checkpoint loader (random weights), no progress bar
        **overrides,
    )
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    network = workflow.parser.get_parsed_content("network").eval()
    timer = ForwardTimer(network)
    marks: list[dict[str, float]] = []

    def mark(name: str):
        def handler(engine: Any) -> None:
            if name == "batch_started":
                marks.append({})
                # the iteration counter is 0 before the first batch
                timer.recording = engine.state.iteration >= (1 if warmup else 0)
            marks[-1][name] = time.perf_counter()
            if name == "forward_completed":
                marks[-1]["network"] = timer.seconds

        return handler

    evaluator.add_event_handler(Events.GET_BATCH_STARTED, mark("batch_started"))
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, mark("batch_completed"))
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, mark("forward_completed"))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, mark("iteration_completed"))
    with torch.inference_mode():
        workflow.run()
    workflow.finalize()
    timer.recording = False
    timed = [
        m for m in marks[1 if warmup else 0 :] if "iteration_completed" in m
    ]  # the last mark is the end of data
    network_seconds = np.diff([0.0] + [m["network"] for m in timed])
    per_volume = [m["iteration_completed"] - m["batch_started"] for m in timed]
    load = [m["batch_completed"] - m["batch_started"] for m in timed]
    infer = [m["forward_completed"] - m["batch_completed"] for m in timed]
    post = [m["iteration_completed"] - m["forward_completed"] for m in timed]
    return {
        "seconds_per_volume": per_volume,
        "load_seconds": float(sum(load)),
        "inferer_seconds": float(sum(infer)),
        "network_seconds": float(network_seconds.sum()),
        "post_seconds": float(sum(post)),
        "total_seconds": float(sum(per_volume)),
        "forward_calls": timer.calls,
        "members": list(network.members),
        "bf16": isinstance(evaluator.inferer, BFloat16Inferer) and evaluator.inferer.enabled,
    }


def bare_forward(
    members: list[torch.nn.Module], calls: list[tuple[int, tuple[int, ...]]], bf16: bool = False
) -> float:
    """Seconds for the members' forward on in-memory inputs of the recorded shapes (the floor), in the
    precision the bundle ran them (bfloat16 autocast when its ``BFloat16Inferer`` was enabled)."""
    inputs = [torch.randn(shape) for _, shape in calls]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        members[calls[0][0]](inputs[0])  # warm-up
        start = time.perf_counter()
        for (index, _), x in zip(calls, inputs, strict=True):
            members[index](x)
        return time.perf_counter() - start


def _padded_slice(volume: torch.Tensor, axis: int, k: int, roi: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Slice ``k`` of a channel-first volume along ``axis``, zero-padded up to ``roi``; and its size."""
    plane = volume.select(axis + 1, k)
    size = list(plane.shape[1:])
    pad_h, pad_w = max(roi[0] - size[0], 0), max(roi[1] - size[1], 0)
    return torch.nn.functional.pad(plane, [0, pad_w, 0, pad_h])[None], size


def naive_infer(
    files: list[str], output_dir: Path, members: list[torch.nn.Module], config: dict
) -> list[float]:
    """One slice at a time, batch 1, for each member and mirror; nibabel in and out. Seconds per volume."""
    seconds = []
    with torch.inference_mode():
        for path in files:
            start = time.perf_counter()
            image = nib.load(path)
            data = np.asarray(image.dataobj, dtype=np.float32)
            data = (data - data.mean()) / max(float(data.std()), 1e-8)
            volume = torch.from_numpy(data)[None]
            total = torch.zeros((config["num_classes"], *data.shape))
            flips: list[list[int]] = [[]] + [[axis + 1] for axis in config["mirror_axes"]]
            for member, axis, roi in zip(members, config["slice_axis"], config["roi_size"], strict=True):
                for dims in flips:
                    source = torch.flip(volume, dims) if dims else volume
                    stacked = stack_neighbour_slices(source, axis, config["neighbours"])
                    probabilities = torch.zeros_like(total)
                    for k in range(data.shape[axis]):
                        window, (h, w) = _padded_slice(stacked, axis, k, roi)
                        out = torch.softmax(member(window), dim=1)[0, :, :h, :w]
                        probabilities.select(axis + 1, k).copy_(out)
                    total += torch.flip(probabilities, dims) if dims else probabilities
            mask = total.argmax(0).numpy().astype(np.uint8)
            nib.save(nib.Nifti1Image(mask, image.affine), str(output_dir / f"naive_{Path(path).name}"))
            seconds.append(time.perf_counter() - start)
    return seconds


def synthetic_ct(path: Path, shape: tuple[int, int, int]) -> None:
    """A CT-sized int16 NIfTI (HU-like: air, a body ellipse, noise) at 0.7 x 0.7 x 2.5 mm."""
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    data = np.full(shape, -1000, dtype=np.int16)
    data[body] = 40
    data += rng.normal(0, 20, size=shape).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0])), str(path))


# What the baselines run without our settings: MONAI's default memory format (NCHW weights), float32,
# batch 1, constant blending (MONAI-default baseline); the naive loop uses NCHW float32 copies.
MONAI_DEFAULTS: dict[str, Any] = {
    "network": "$unet_monai.networks.axis_ensemble(@network_def, @slice_axis).to(@device)",
    "inferer#sw_batch_size": 1,
    "inferer#mode": "constant",
    "cpu_bf16": False,
}


def nchw_copies(members: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """Copies of the members with PyTorch's default (contiguous, NCHW) memory format."""
    return [copy.deepcopy(member).to(memory_format=torch.contiguous_format) for member in members]


def bundle_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """The inference settings the naive loop reproduces."""
    parser = load_workflow(BUNDLE, "inference", **overrides).parser
    keys = ["num_classes", "slice_axis", "roi_size", "neighbours", "mirror_axes", "members"]
    return {key: parser.get_parsed_content(key) for key in keys}


def bench_folder(
    files: list[str], naive_volumes: int, overrides: dict[str, Any], work: Path
) -> dict[str, Any]:
    """The hippocampus folder: bundle end to end, floor, naive loop, MONAI default SliceInferer.

    The baselines run on the first ``naive_volumes`` volumes (without a warm-up volume: batch-1
    shapes need none to speak of), compared with the bundle's time on those same volumes."""
    config = bundle_config(overrides)
    e2e = run_bundle(files, work / "bundle", overrides)
    floor = bare_forward(e2e["members"], e2e["forward_calls"], e2e["bf16"])
    subset = files[:naive_volumes]
    naive = naive_infer(subset, work, nchw_copies(e2e["members"]), config)
    default = run_bundle(subset, work / "default", overrides | MONAI_DEFAULTS, False)
    e2e_subset = sum(e2e["seconds_per_volume"][:naive_volumes])
    return {
        "volumes": len(files),
        "bundle_overrides": overrides,
        "baseline_volumes": len(subset),
        "volumes_per_s": len(files) / e2e["total_seconds"],
        "floor_volumes_per_s": len(files) / floor,
        "naive_volumes_per_s": len(subset) / sum(naive),
        "monai_default_volumes_per_s": len(subset) / default["total_seconds"],
        "e2e_over_floor": e2e["total_seconds"] / floor,
        "speedup_vs_naive": sum(naive) / e2e_subset,
        "speedup_vs_monai_default": default["total_seconds"] / e2e_subset,
        "windows_per_volume": len(files) and sum(s[0] for _, s in e2e["forward_calls"]) / len(files),
        "forward_calls_per_volume": len(e2e["forward_calls"]) / len(files),
        "seconds": _breakdown(e2e)
        | {"floor": floor, "naive": sum(naive), "monai_default": default["total_seconds"]},
    }


def bench_ensemble(files: list[str], work: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The whole bundle (three members, mirror TTA) end to end against its floor, no other baseline."""
    e2e = run_bundle(files, work / "ensemble", overrides)
    floor = bare_forward(e2e["members"], e2e["forward_calls"], e2e["bf16"])
    return {
        "volumes": len(files),
        "volumes_per_s": len(files) / e2e["total_seconds"],
        "floor_volumes_per_s": len(files) / floor,
        "e2e_over_floor": e2e["total_seconds"] / floor,
        "windows_per_volume": sum(s[0] for _, s in e2e["forward_calls"]) / len(files),
        "forward_calls_per_volume": len(e2e["forward_calls"]) / len(files),
        "seconds": _breakdown(e2e) | {"floor": floor},
    }


def bench_ct(
    depth: int, full_bundle: bool, baselines: bool, work: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """One synthetic 512 x 512 x depth volume: bundle end to end, floor, MONAI default SliceInferer.

    Unless ``full_bundle``, the bundle runs its axial member only, without mirror TTA (``members`` and
    ``mirror_axes`` overridden): the full ensemble needs 6.4x the windows at 300 slices, 85x at 2
    (its sagittal and coronal members slice a 512 x 512 volume 512 times each, twice with TTA).
    Without ``baselines`` the MONAI default run (one window per forward) is skipped.
    """
    path = work / "ct.nii.gz"
    synthetic_ct(path, (512, 512, depth))
    overrides = extra if full_bundle else AXIAL_ONLY | extra
    e2e = run_bundle([str(path)], work / "ct", overrides)
    floor = bare_forward(e2e["members"], e2e["forward_calls"], e2e["bf16"])
    default_seconds = None
    if baselines:
        default_overrides = overrides | MONAI_DEFAULTS
        default_seconds = run_bundle([str(path)], work / "ct_default", default_overrides, False)[
            "total_seconds"
        ]
    return {
        "shape": [512, 512, depth],
        "bundle_overrides": overrides,
        "volumes_per_s": 1 / e2e["total_seconds"],
        "floor_volumes_per_s": 1 / floor,
        "monai_default_volumes_per_s": default_seconds and 1 / default_seconds,
        "e2e_over_floor": e2e["total_seconds"] / floor,
        "speedup_vs_monai_default": default_seconds and default_seconds / e2e["total_seconds"],
        "windows": sum(s[0] for _, s in e2e["forward_calls"]),
        "seconds": _breakdown(e2e) | {"floor": floor, "monai_default": default_seconds},
    }


def _breakdown(run: dict[str, Any]) -> dict[str, float]:
    """Where the end-to-end time went."""
    return {
        "e2e": run["total_seconds"],
        "load_preprocess": run["load_seconds"],
        "inferer": run["inferer_seconds"],
        "network_forward_in_e2e": run["network_seconds"],
        "postprocess_invert_write": run["post_seconds"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="axial-only, 6 volumes (2 for baselines and ensemble), CT 512x512x2",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="1 volume, axial member only, CT depth 1 (tests)"
    )
    parser.add_argument("--volumes", type=int, default=40, help="hippocampus volumes end to end")
    parser.add_argument(
        "--naive-volumes", type=int, default=8, help="volumes for the naive and MONAI baselines"
    )
    parser.add_argument("--ct-depth", type=int, default=300, help="slices of the synthetic CT volume")
    parser.add_argument("--ct-full-bundle", action="store_true", help="CT through the whole ensemble + TTA")
    parser.add_argument("--ct-baselines", action="store_true", help="CT: also MONAI default (slow)")
    parser.add_argument("--axial-only", action="store_true", help="hippocampus: axial member, no TTA")
    parser.add_argument(
        "--ensemble-volumes", type=int, default=1, help="with --axial-only: also the whole bundle e2e / floor"
    )
    parser.add_argument("--data", default=str(DATA), help="folder of hippocampus NIfTI volumes")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a bundle config value in the bundle's runs (not the baselines' settings), e.g. "
        "to measure a setting against the default: --set 'network=$...'",
    )
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    extra = dict(parse_override(text) for text in args.set)
    if args.quick:
        args.volumes, args.naive_volumes, args.ct_depth, args.axial_only = 6, 2, 2, True
        args.ensemble_volumes = 2
    if args.smoke:
        args.volumes, args.naive_volumes, args.ct_depth, args.axial_only = 1, 1, 1, True
        args.ensemble_volumes = 0
    files = sorted(str(p) for p in Path(args.data).glob("*.nii.gz"))[: args.volumes]
    result: dict[str, Any] = {"machine": machine_info(), "settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        overrides = (AXIAL_ONLY if args.axial_only else {}) | extra
        result["hippocampus"] = bench_folder(files, min(args.naive_volumes, len(files)), overrides, work)
        if args.axial_only and args.ensemble_volumes > 0:
            result["hippocampus_ensemble"] = bench_ensemble(files[: args.ensemble_volumes], work, extra)
        result["ct"] = bench_ct(args.ct_depth, args.ct_full_bundle, args.ct_baselines, work, extra)
    hip = result["hippocampus"]
    # the target is about the bundle as shipped: the whole ensemble when it was measured apart
    result["e2e_over_floor"] = result.get("hippocampus_ensemble", hip)["e2e_over_floor"]
    result["speedup_vs_naive"] = hip["speedup_vs_naive"]
    result["speedup_vs_monai_default"] = hip["speedup_vs_monai_default"]
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = rounded(result)
    print_table(result)
    emit_json(result, args.output)
    return result


def print_table(result: dict[str, Any]) -> None:
    """A short human-readable table (to stderr, so stdout stays JSON after it)."""
    hip, ct = result["hippocampus"], result["ct"]
    rows = [
        ("hippocampus volumes/s (bundle e2e)", hip["volumes_per_s"]),
        ("  floor (bare forward) volumes/s", hip["floor_volumes_per_s"]),
        ("  naive one-slice loop volumes/s", hip["naive_volumes_per_s"]),
        ("  MONAI default SliceInferer volumes/s", hip["monai_default_volumes_per_s"]),
        ("  e2e / floor (target <= 1.15)", hip["e2e_over_floor"]),
        ("  speedup vs naive (target >= 5)", hip["speedup_vs_naive"]),
        ("  speedup vs MONAI default", hip["speedup_vs_monai_default"]),
        (f"CT {ct['shape']} volumes/s (bundle e2e)", ct["volumes_per_s"]),
        ("  e2e / floor", ct["e2e_over_floor"]),
        ("  speedup vs MONAI default", ct["speedup_vs_monai_default"]),
    ]
    for name, value in rows:
        print(f"{name:<45} {'-' if value is None else format(value, '.4g'):>10}", file=sys.stderr)


if __name__ == "__main__":
    main()
