"""How often does a CPU bfloat16 forward give non-finite gradients? The 3D bundle's network and loss, random
batches, bf16 autocast against float32 on the same seeds.

For each seed: a freshly initialised ``network_def`` of ``bundles/hippocampus_unet3d`` (``--features``), a
random batch of 2 x 1 x ``--roi`` with random labels 0 .. 2, its ``loss`` (DiceCE), one backward; counts
the seeds where some parameter's gradient is not finite, for the forward under ``torch.autocast("cpu",
bfloat16)`` (as ``BFloat16Inferer`` runs it) and in float32. Prints JSON. The figures in the README
(``handlers.SkipNonFiniteSteps``) came from:

    python studies/bf16_nan_gradients.py --features 4 --roi 16 16 16 --batches 200
    python studies/bf16_nan_gradients.py --features 16 --roi 32 48 32 --batches 100 --bf16-only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # machine.py: shared with bench/
from machine import emit_json, machine_info  # noqa: E402

from unet_monai.bundle import load_workflow  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet3d"


def nonfinite_seeds(parser, roi: list[int], batches: int, bf16: bool) -> dict:  # noqa: ANN001
    """The seeds whose gradients were not finite, and the parameters they hit."""
    loss_function = parser.get_parsed_content("loss")
    seeds, parameters = [], set()
    for seed in range(batches):
        torch.manual_seed(seed)
        network = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
        images = torch.randn(2, 1, *roi) * 2
        labels = (torch.rand(2, 1, *roi) * 3).floor()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = network(images)
        loss_function(outputs.float(), labels).backward()
        hit = [
            n
            for n, p in network.named_parameters()
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        if hit:
            seeds.append(seed)
            parameters.update(hit)
    return {"nonfinite": len(seeds), "seeds": seeds, "parameters": sorted(parameters)}


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--features", type=int, default=4)
    arguments.add_argument("--roi", type=int, nargs=3, default=[16, 16, 16])
    arguments.add_argument("--batches", type=int, default=200)
    arguments.add_argument("--bf16-only", action="store_true", help="skip the float32 pass")
    arguments.add_argument("--output", help="also write the JSON here")
    args = arguments.parse_args()
    torch.set_num_threads(1)
    parser = load_workflow(BUNDLE, "train", features=args.features, roi_size=args.roi).parser
    result = {
        "features": args.features,
        "roi": args.roi,
        "batches": args.batches,
        "bf16": nonfinite_seeds(parser, args.roi, args.batches, bf16=True),
        "fp32": None if args.bf16_only else nonfinite_seeds(parser, args.roi, args.batches, bf16=False),
        "machine": machine_info(),
    }
    emit_json(result, args.output)


if __name__ == "__main__":
    main()
