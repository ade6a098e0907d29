"""FLOPs per slice of every registered network, and the GFLOP/s each achieves next to a matmul (sgemm).

Each network is built with the hippocampus bundle's settings (2D, 5 input channels for 2.5D, 3 classes,
20 base features, depth 4, each factory's own default norm) and counted with
``torch.utils.flop_counter.FlopCounterMode`` on one 48 x 64 slice (the bundle's axial window). Its
forward on a batch of slices in ``torch.inference_mode`` gives achieved GFLOP/s; a float32 matmul
measured in the same run gives what the CPU reaches on the easiest kernel. Prints a table, then JSON.

    python bench/bench_arithmetic.py --quick
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import emit_json, machine_info, rounded
from torch.utils.flop_counter import FlopCounterMode

from unet_monai.networks import create_network, list_networks

SETTINGS = {"spatial_dims": 2, "in_channels": 5, "out_channels": 3, "features": 20, "depth": 4}
SLICE = (48, 64)


def best_seconds(call: Callable[[], Any], repeats: int) -> float:
    """The shortest of ``repeats`` timed calls, after one untimed warm-up call."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def sgemm_gflops(size: int, repeats: int) -> float:
    """GFLOP/s of a ``size`` x ``size`` float32 matmul (best of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def network_arithmetic(name: str, batch: int, repeats: int) -> dict[str, Any]:
    """FLOPs per slice and achieved GFLOP/s (best of ``repeats`` forwards of ``batch`` slices)."""
    torch.manual_seed(0)
    net = create_network(name, **SETTINGS).eval()
    x = torch.randn(batch, SETTINGS["in_channels"], *SLICE)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            net(x[:1])
        flops = counter.get_total_flops()
        best = best_seconds(lambda: net(x), repeats)
    return {
        "gflop_per_slice": flops / 1e9,
        "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "slices_per_s": batch / best,
        "gflops": flops * batch / best / 1e9,
    }


def batch_scaling(batches: list[int], repeats: int) -> dict[str, float]:
    """The bundle's U-Net (ronneberger_unet): slices/s at each batch size (best of ``repeats``)."""
    torch.manual_seed(0)
    net = create_network("ronneberger_unet", **SETTINGS, norm="batch").eval()
    rates = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, SETTINGS["in_channels"], *SLICE)
            rates[str(batch)] = batch / best_seconds(lambda x=x: net(x), repeats)
    return rates


def inference_paths(batch: int, repeats: int, compile_network: bool = False) -> dict[str, Any]:
    """The bundle's U-Net forward on ``batch`` slices through each CPU inference path, as slices/s and
    as a ratio to plain eager float32 (NCHW), timed interleaved (best of ``repeats``) so that a change of
    load hits every path alike. Paths: channels-last weights (the bundles' inference default), bf16
    autocast, TorchScript (traced and frozen: oneDNN conv + batch-norm folding), both, and ONNX Runtime
    when it is installed (it is not a dependency). Each path's largest difference from eager is kept."""
    torch.manual_seed(0)
    eager = create_network("ronneberger_unet", **SETTINGS, norm="batch").eval()
    x = torch.randn(batch, SETTINGS["in_channels"], *SLICE)
    channels_last = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    paths: dict[str, Any] = {"eager_nchw": eager, "channels_last": channels_last}
    results: dict[str, Any] = {}
    with torch.inference_mode():
        reference = eager(x)

        def bf16(inputs: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return channels_last(inputs).float()

        paths["channels_last_bf16"] = bf16
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the traced shapes are the ones timed
            paths["torchscript_frozen"] = torch.jit.freeze(torch.jit.trace(copy.deepcopy(eager), x))
            paths["torchscript_frozen_channels_last"] = torch.jit.freeze(torch.jit.trace(channels_last, x))
    if compile_network:  # inductor: a minute or more of compilation on this CPU, so only on request
        compiled = torch.compile(channels_last, dynamic=False)

        def compiled_bf16(inputs: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compiled(inputs).float()

        with torch.inference_mode():
            start = time.perf_counter()
            compiled_bf16(x)
            results["torch_compile_channels_last_bf16"] = {"compile_seconds": time.perf_counter() - start}
        paths["torch_compile_channels_last_bf16"] = compiled_bf16
    try:
        paths["onnxruntime"] = onnxruntime_path(eager, x)
    except ImportError as error:
        results["onnxruntime"] = {"skipped": f"not installed ({error})"}
    best = dict.fromkeys(paths, float("inf"))
    with torch.inference_mode():
        for name, path in paths.items():
            difference = float((torch.as_tensor(path(x)) - reference).abs().max())
            results.setdefault(name, {})["max_abs_difference"] = difference
        for _ in range(repeats):
            for name, path in paths.items():
                start = time.perf_counter()
                path(x)
                best[name] = min(best[name], time.perf_counter() - start)
    for name in paths:
        results[name] |= {
            "slices_per_s": batch / best[name],
            "speedup_vs_eager": best["eager_nchw"] / best[name],
        }
    return results


def onnxruntime_path(network: torch.nn.Module, x: torch.Tensor) -> Any:
    """The network exported to ONNX and run by ONNX Runtime (CPU), as a callable on torch tensors."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "network.onnx"
        torch.onnx.export(network, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": inputs.numpy()})[0])

    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 8, 1 repeat")
    parser.add_argument("--smoke", action="store_true", help="two networks, batch 2 (tests only)")
    parser.add_argument("--batch", type=int, default=64, help="slices per timed forward")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per network (best kept)")
    parser.add_argument(
        "--compile", action="store_true", help="also torch.compile (inductor) among the inference paths"
    )
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    names = list_networks()
    if args.quick:
        args.batch, args.repeats = 8, 1
    if args.smoke:
        args.batch, args.repeats, names = 2, 1, ["ronneberger_unet", "monai_unet"]
    result: dict[str, Any] = {"machine": machine_info(), "settings": vars(args) | SETTINGS | {"slice": SLICE}}
    result["sgemm_gflops"] = sgemm_gflops(1024, 5)
    networks: dict[str, Any] = {}
    for name in names:
        try:
            networks[name] = network_arithmetic(name, args.batch, args.repeats)
        except Exception as error:  # a network that cannot take these settings is reported, not fatal
            networks[name] = {"error": f"{type(error).__name__}: {error}"}
    for entry in networks.values():
        if "gflops" in entry:
            entry["fraction_of_sgemm"] = entry["gflops"] / result["sgemm_gflops"]
    result["networks"] = networks
    batches = [1, 8, 64] if not args.smoke else [1, 2]
    result["ronneberger_slices_per_s_by_batch"] = batch_scaling(batches, max(args.repeats, 2))
    result["inference_paths_batch_64"] = inference_paths(
        64 if not args.smoke else 2, max(args.repeats, 3), args.compile
    )
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = rounded(result)
    print(f"{'sgemm 1024 GFLOP/s':<32} {result['sgemm_gflops']:>9.4g}", file=sys.stderr)
    print(f"{'network':<32} {'GFLOP/slice':>11} {'GFLOP/s':>9} {'of sgemm':>9}", file=sys.stderr)
    print(
        f"ronneberger_unet slices/s by batch: {result['ronneberger_slices_per_s_by_batch']}", file=sys.stderr
    )
    for name, entry in result["inference_paths_batch_64"].items():
        if "speedup_vs_eager" in entry:
            print(
                f"  path {name:<34} {entry['slices_per_s']:>8.4g} slices/s "
                f"{entry['speedup_vs_eager']:>6.3g}x eager",
                file=sys.stderr,
            )
    for name, entry in result["networks"].items():
        if "error" in entry:
            print(f"{name:<32} {entry['error'][:60]}", file=sys.stderr)
        else:
            print(
                f"{name:<32} {entry['gflop_per_slice']:>11.4g} {entry['gflops']:>9.4g} "
                f"{entry['fraction_of_sgemm']:>9.3g}",
                file=sys.stderr,
            )
    emit_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
