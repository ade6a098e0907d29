"""Does bfloat16 inference change the hippocampus bundle's Dice? fp32 and bf16 on the same checkpoints.

Evaluates trained checkpoints (a ``quality_hippocampus.py --keep`` folder) with the bundle's
``evaluate.json`` twice: ``cpu_bf16`` false (float32) and true (its validation inferer under
``BFloat16Inferer``: CPU autocast to bfloat16, as the training forward runs, the default where the
CPU has native bfloat16), and prints the Dice of each and the time each evaluation took, as JSON.

    AXIAL='members=[{"slice_axis": 2, "roi_size": [48, 64], "epochs": 12}]'
    python studies/quality_hippocampus.py --epochs 12 --keep /tmp/q --set "$AXIAL"
    python studies/bf16_inference_check.py --work /tmp/q/epochs_12 --set "$AXIAL"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # machine.py: shared with bench/
from machine import emit_json, machine_info, rounded  # noqa: E402

from unet_monai.bundle import load_workflow, parse_override  # noqa: E402
from unet_monai.inference import BFloat16Inferer, cpu_bf16_supported  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus"


def evaluate(overrides: dict, bf16: bool) -> dict:
    """Dice per class and mean of ``evaluate.json`` with these overrides, optionally in bfloat16."""
    workflow = load_workflow(BUNDLE, "evaluate", **overrides, cpu_bf16=bf16)
    workflow.initialize()
    parser = workflow.parser
    evaluator = parser.get_parsed_content("validate#evaluator")
    if not isinstance(evaluator.inferer, BFloat16Inferer) or evaluator.inferer.enabled != bf16:
        raise RuntimeError("evaluate.json's validation inferer is not BFloat16Inferer(enabled=cpu_bf16)")
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    metrics = evaluator.state.metrics
    names = parser.get_parsed_content("class_names")
    return {
        "seconds": seconds,
        "val_dice": {name: float(metrics[f"val_dice_{name}"]) for name in names}
        | {"mean": float(metrics["val_mean_dice"])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="trained bundle_root (holds models/)")
    parser.add_argument("--data", type=Path, default=DATA, help="MSD hippocampus folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle override")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    if not cpu_bf16_supported():
        raise SystemExit("error: this CPU has no native bfloat16 (AVX512-BF16 / AMX): nothing to compare")
    overrides = {"dataset_dir": str(args.data), "bundle_root": str(args.work)}
    overrides |= dict(parse_override(text) for text in args.set)
    fp32 = evaluate(overrides, bf16=False)
    bf16 = evaluate(overrides, bf16=True)
    result = {
        "machine": machine_info(),
        "overrides": overrides,
        "fp32": fp32,
        "bf16": bf16,
        "mean_dice_difference": bf16["val_dice"]["mean"] - fp32["val_dice"]["mean"],
        "bf16_speedup": fp32["seconds"] / bf16["seconds"],
    }
    emit_json(rounded(result), args.output)


if __name__ == "__main__":
    main()
