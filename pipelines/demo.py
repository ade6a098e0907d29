"""The demo: synthetic volumes -> short CPU training of the 2D Ronneberger U-Net bundle ->
slice-by-slice masks of whole held-out volumes -> Dice / IoU -> an overlay PNG.

Run it with ``make demo``, ``unet-monai demo`` or ``python -m pipelines.demo``. Everything it makes
is written under one output folder; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from unet_monai.bundle import run_workflow
from unet_monai.data import make_synthetic_dataset, msd_datalist
from unet_monai.evaluate import evaluate_folders
from unet_monai.visualize import save_overlay_png

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundles" / "hippocampus_unet2d"


def run_demo(
    output_dir: Path = Path("demo_output"),
    epochs: int = 20,
    num_cases: int = 24,
    num_test: int = 4,
    bundle_dir: Path = BUNDLE_DIR,
) -> dict:
    """Run the whole demo; returns the evaluation summary."""
    output_dir = Path(output_dir).resolve()
    start = time.time()
    train_dir = make_synthetic_dataset(output_dir / "data" / "train", num_cases=num_cases - num_test, seed=0)
    test_dir = make_synthetic_dataset(output_dir / "data" / "test", num_cases=num_test, seed=1)
    print(f"[demo] {num_cases - num_test} training and {num_test} test volumes in {output_dir / 'data'}")

    models_dir = output_dir / "models"
    # One axial network (the bundle's default trains one per slice direction: three times the time).
    members = [{"slice_axis": 2, "roi_size": [48, 64], "epochs": epochs}]
    run_workflow(
        bundle_dir,
        "train",
        dataset_dir=str(train_dir),
        ckpt_dir=str(models_dir),
        output_dir=str(output_dir / "runs"),
        class_names=["head", "tail"],
        val_interval=1,
        members=members,
    )
    print(f"[demo] trained {epochs} epochs in {time.time() - start:.0f} s")

    masks_dir = output_dir / "masks"
    test_images = [item["image"] for item in msd_datalist(test_dir)]
    run_workflow(
        bundle_dir,
        "inference",
        datalist=test_images,
        ckpt_path=str(models_dir / "model.pt"),
        output_dir=str(masks_dir),
        members=members,
    )
    summary = evaluate_folders(
        masks_dir, test_dir / "labelsTr", output_dir / "metrics", class_names=["head", "tail"]
    )

    first = Path(test_images[0])
    case = first.name.removesuffix(".nii.gz")
    overlay = save_overlay_png(
        first,
        [masks_dir / f"{case}_seg.nii.gz", test_dir / "labelsTr" / first.name],
        output_dir / "overlay.png",
    )
    print(f"[demo] done in {time.time() - start:.0f} s")
    print(f"[demo] masks:          {masks_dir}")
    print(f"[demo] metrics:        {output_dir / 'metrics' / 'metrics.csv'}")
    print(f"[demo] summary:        {output_dir / 'metrics' / 'summary.json'}")
    print(f"[demo] overlay:        {overlay} (left: prediction, right: reference)")
    print(f"[demo] TensorBoard:    tensorboard --logdir {output_dir / 'runs'}")
    print(f"[demo] test Dice:      {json.dumps(summary['per_class'])}")
    print(f"[demo] mean Dice {summary['mean']['dice']:.3f}, mean IoU {summary['mean']['iou']:.3f}")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="demo_output")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--cases", type=int, default=24)
    args = parser.parse_args(argv)
    run_demo(Path(args.output), args.epochs, args.cases)


if __name__ == "__main__":
    main()
