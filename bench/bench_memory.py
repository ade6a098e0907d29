"""Memory of the hippocampus bundle's inference workflow: peak RSS on a CT-sized volume, RSS growth.

Each measurement runs the bundle's ``inference.json`` workflow (the whole ensemble with mirror TTA, random
weights; ``--peak-axial-only`` / ``--growth-axial-only``: its axial member alone, no TTA) in a fresh
subprocess (``--quick``: the growth run axial-only, 200 volumes in about a minute):

- peak: one synthetic 512 x 512 x Z int16 volume; the child's peak RSS (``ru_maxrss``) divided by the
  volume's float32 size (and, apart, the peak above the RSS the child had after its imports);
- growth: 200 consecutive hippocampus volumes; RSS sampled after each one, growth from the 10th to the
  last as a fraction of the RSS after the 10th.

By default the network is a cheap stand-in (``--network standin``: a 1x1 convolution with the same
input and output channels) so that the CT-sized volume takes minutes, not hours, on a CPU: the
pipeline's volume-sized buffers (neighbour stacks, per-axis probabilities, blending weights, TTA
flips, inversion) are the same; the real U-Net adds its activations for one batch of 64 windows
(about 195 MB measured apart). ``--network bundle`` uses the bundle's own U-Net. Prints a table, then JSON.

    python bench/bench_memory.py --quick
    python bench/bench_memory.py --depth 300 --volumes 200 --network bundle
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus" / "imagesTr"
STANDIN = {
    "_target_": "torch.nn.Conv2d",
    "in_channels": "$unet_monai.transforms.neighbour_channels(1, @neighbours)",
    "out_channels": "@num_classes",
    "kernel_size": 1,
}
# The bundle's axial member alone, without mirror TTA (bundle overrides).
AXIAL_ONLY: dict[str, Any] = {
    "members": [{"slice_axis": 2, "roi_size": [48, 64], "epochs": 45}],
    "mirror_axes": [],
}


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(files: list[str], output_dir: str, network: str, axial_only: bool) -> dict[str, Any]:
    """Run the bundle's inference workflow on ``files``; RSS after imports, after each volume, and peak."""
    import torch
    from ignite.engine import Events

    from unet_monai.bundle import load_workflow

    after_import = rss_bytes()
    overrides: dict[str, Any] = {"datalist": files, "output_dir": output_dir, "handlers": []}
    if network == "standin":
        overrides["network_def"] = STANDIN
    if axial_only:
        overrides |= AXIAL_ONLY
    torch.manual_seed(0)
    workflow = load_workflow(BUNDLE, "inference", **overrides)
    workflow.initialize()
    samples: list[int] = []
    evaluator = workflow.parser.get_parsed_content("evaluator")
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: samples.append(rss_bytes()))
    start = time.perf_counter()
    with torch.inference_mode():
        workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    return {
        "rss_after_import": after_import,
        "rss_after_each": samples,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": seconds,
    }


def run_child(files: list[str], output_dir: Path, network: str, axial_only: bool) -> dict[str, Any]:
    """``child`` in a fresh interpreter (its peak is its own); the parent's view of its peak added."""
    list_file = output_dir / "files.json"
    list_file.write_text(json.dumps(files))
    command = [sys.executable, __file__, "--child", str(list_file), "--network", network]
    command += ["--output-dir", str(output_dir)] + (["--axial-only"] if axial_only else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["children_peak_rss_so_far"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return report


def synthetic_ct(path: Path, shape: tuple[int, int, int]) -> None:
    """A CT-sized int16 NIfTI (air, a body ellipse, noise) at 0.7 x 0.7 x 2.5 mm."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    data = np.full(shape, -1000, dtype=np.int16)
    data[(x / 0.8) ** 2 + (y / 0.6) ** 2 < 1] = 40
    data += rng.normal(0, 20, size=shape).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0])), str(path))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="--growth-axial-only (5 minutes instead of 10)")
    parser.add_argument(
        "--smoke", action="store_true", help="seconds: 512 x 512 x 2, 12 volumes (tests only)"
    )
    parser.add_argument("--depth", type=int, default=300, help="slices of the 512 x 512 volume")
    parser.add_argument("--volumes", type=int, default=200, help="consecutive hippocampus volumes")
    parser.add_argument("--network", choices=["standin", "bundle"], default="standin")
    parser.add_argument("--peak-axial-only", action="store_true", help="peak: the axial member alone, no TTA")
    parser.add_argument(
        "--growth-axial-only", action="store_true", help="growth: the axial member alone, no TTA"
    )
    parser.add_argument("--data", default=str(DATA), help="folder of hippocampus NIfTI volumes")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--axial-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        files = json.loads(Path(args.child).read_text())
        print(json.dumps(child(files, args.output_dir, args.network, args.axial_only)))
        return {}
    if args.quick:
        args.growth_axial_only = True
    if args.smoke:
        args.depth, args.volumes, args.peak_axial_only, args.growth_axial_only = 2, 12, True, True
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import emit_json, machine_info

    result: dict[str, Any] = {"machine": machine_info(), "settings": vars(args)}
    shape = (512, 512, args.depth)
    volume_bytes = 4 * shape[0] * shape[1] * shape[2]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthetic_ct(work / "ct.nii.gz", shape)
        peak = run_child([str(work / "ct.nii.gz")], work, args.network, args.peak_axial_only)
        available = sorted(str(p) for p in Path(args.data).glob("*.nii.gz"))
        files = [available[i % len(available)] for i in range(args.volumes)]
        growth = run_child(files, work, args.network, args.growth_axial_only)
    samples = growth["rss_after_each"]
    first = min(9, len(samples) - 1)  # after 10 volumes: caches and allocator pools warmed up
    reference = samples[first]
    result |= {
        "shape": list(shape),
        "volume_float32_bytes": volume_bytes,
        "peak_rss_bytes": peak["peak_rss"],
        "rss_after_import_bytes": peak["rss_after_import"],
        "peak_rss_over_volume": peak["peak_rss"] / volume_bytes,
        "peak_rss_above_import_over_volume": (peak["peak_rss"] - peak["rss_after_import"]) / volume_bytes,
        "peak_seconds": peak["seconds"],
        "parent_children_peak_rss_bytes": peak["children_peak_rss_so_far"],
        "growth_volumes": len(samples),
        "rss_growth_200": (samples[-1] - reference) / reference,
        "rss_growth_max": (max(samples[first:]) - reference) / reference,
        "rss_mb_at": {str(i + 1): samples[i] / 2**20 for i in sorted({0, first, len(samples) - 1})},
        # does it level off? growth over the second half alone, and every sample
        "rss_growth_second_half": (samples[-1] - samples[len(samples) // 2]) / reference,
        "rss_mb_after_each": [round(x / 2**20, 1) for x in samples],
        "growth_seconds": growth["seconds"],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    result = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in result.items()}
    for name, key in [
        ("peak RSS / float32 volume (target < 4)", "peak_rss_over_volume"),
        ("  (peak - RSS after imports) / volume", "peak_rss_above_import_over_volume"),
        (f"RSS growth over {len(samples)} volumes (target < 0.05)", "rss_growth_200"),
    ]:
        print(f"{name:<45} {result[key]:>10.4g}", file=sys.stderr)
    emit_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
