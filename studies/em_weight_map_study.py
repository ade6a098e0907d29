"""With and without the U-Net paper's border weight map on ISBI 2012 EM: same seed, same budget.

Trains the ``em_cells_unet2d`` bundle twice, ``weight_map: false`` then ``true``, with everything
else equal (seed, split, network, patches, epochs, learning rate), then evaluates each final
checkpoint (``models/model.pt``) on the held-out test slices 25..29 with the bundle's
``evaluate.json``: pixel accuracy, F1 and IoU of the membrane pooled over the slices, and the mean
adapted Rand error of the cells (lower is better). Per-slice scores are recomputed from the masks
written (``unet_monai.metrics.em.em_scores``). As a second modality, each checkpoint also segments
the DSB 2018 fluorescence nuclei image (``inference.json``, untuned); nuclei are compared, as the
enclosed objects, with the predicted cells (Dice of ``mask > 0``).

Prints one JSON document (and writes it to ``--output/study.json``). The default is a reduced
budget (4 min 5 s on one thread beside another training, 2026-11-29); the bundle's own defaults
(256x256 patches, 50 epochs) are ``--epochs 50 --set roi_size=[256,256]``.

    python studies/em_weight_map_study.py                  # reduced default
    python studies/em_weight_map_study.py --epochs 2       # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # machine.py: shared with bench/
from machine import machine_info  # noqa: E402
from PIL import Image  # noqa: E402

from unet_monai.bundle import parse_override, run_workflow  # noqa: E402
from unet_monai.metrics import binary_dice, em_scores  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "em_cells_unet2d"
DATA = REPO_ROOT.parent / "shared" / "data" / "isbi2012-em"
# The reduced budget: 128x128 patches, 16 base features, 4 patches per image per epoch.
REDUCED = {"roi_size": [128, 128], "network_def#features": 16, "num_samples": 4, "batch_size": 4}
EPOCHS = 12


def _label_membrane(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) < 128


def train_and_evaluate(weight_map: bool, common: dict, data: Path, work_dir: Path) -> dict:
    """Train one setting, evaluate its final checkpoint on the test slices and on the nuclei image."""
    settings = {**common, "weight_map": weight_map, "bundle_root": str(work_dir), "dataset_dir": str(data)}
    start = time.perf_counter()
    trainer = run_workflow(BUNDLE, "train", **settings).parser.get_parsed_content("train#trainer")
    train_seconds = time.perf_counter() - start
    history = {k: round(float(v), 4) for k, v in trainer.state.metrics.items()}

    no_training = {k: v for k, v in settings.items() if not k.startswith("train#")}
    evaluation = run_workflow(BUNDLE, "evaluate", **no_training)
    parser = evaluation.parser
    pooled = {
        k: round(float(v), 4)
        for k, v in parser.get_parsed_content("validate#evaluator").state.metrics.items()
    }
    per_slice = {}
    for n in parser.get_parsed_content("test_slices"):
        predicted = np.asarray(Image.open(work_dir / "eval" / "pred" / f"{n}_seg.png")) == 0
        scores = em_scores(predicted, _label_membrane(data / "train" / "label" / f"{n}.png"))
        per_slice[n] = {k: round(v, 4) for k, v in scores.items()}

    record = {
        "weight_map": weight_map,
        "train_seconds": round(train_seconds, 1),
        "last_epoch_train_metrics": history,
        "test_pooled": pooled,
        "test_per_slice_mean": {
            k: round(float(np.mean([s[k] for s in per_slice.values()])), 4)
            for k in next(iter(per_slice.values()))
        },
        "test_per_slice": per_slice,
    }
    nuclei_dir = data.parent / "dsb2018-nuclei"  # beside isbi2012-em in ../shared/data
    if not (nuclei_dir / "img2d.tif").is_file():
        record["nuclei_dice"] = f"skipped: {nuclei_dir / 'img2d.tif'} not found"
    else:
        keep = {k: v for k, v in no_training.items() if k.startswith(("network_def#", "roi_size", "padding"))}
        run_workflow(
            BUNDLE,
            "inference",
            bundle_root=str(work_dir),
            datalist=[str(nuclei_dir / "img2d.tif")],
            output_dir=str(work_dir / "nuclei"),
            **keep,
        )
        cells = np.asarray(Image.open(work_dir / "nuclei" / "img2d_seg.png")) > 0
        nuclei = np.asarray(Image.open(nuclei_dir / "mask2d.tif")) > 0
        record["nuclei_dice"] = {
            "predicted_cells_vs_mask": round(binary_dice(cells, nuclei), 4),
            "predicted_membrane_vs_mask": round(binary_dice(~cells, nuclei), 4),
        }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per setting (default {EPOCHS})")
    parser.add_argument("--seed", type=int, default=0, help="the seed both settings share (default 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle override")
    parser.add_argument("--data", type=Path, default=DATA, help="the isbi2012-em folder")
    parser.add_argument(
        "--output", type=Path, default=Path("studies/results/em_weight_map"), help="work folder"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {**REDUCED, "seed": args.seed, "train#trainer#max_epochs": args.epochs}
    common |= dict(parse_override(text) for text in args.set)
    result = {
        "bench": "em_weight_map_study",
        "machine": machine_info(),
        "common": common,
        "runs": [],
    }
    start = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    for weight_map in (False, True):
        work_dir = args.output / ("with_weight_map" if weight_map else "without_weight_map")
        result["runs"].append(train_and_evaluate(weight_map, common, args.data, work_dir))
        result["total_seconds"] = round(time.perf_counter() - start, 1)
        (args.output / "study.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
