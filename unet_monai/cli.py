"""The ``unet-monai`` command line: demo, train, infer, evaluate, networks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unet_monai.data.datalists import IMAGE_SUFFIXES


def _overrides(args: argparse.Namespace) -> dict:
    """The ``--set key=value`` overrides as a dict."""
    from unet_monai.bundle import parse_override

    return dict(parse_override(text) for text in args.set)


def _image_files(path: Path) -> list[str]:
    """One image file, or every image file in a folder (NIfTI, DICOM, PNG, TIFF), as absolute paths.

    A clear error otherwise."""
    suffixes = " / ".join(IMAGE_SUFFIXES)
    if path.is_file():
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            raise SystemExit(f"error: {path}: not an image file ({suffixes})")
        return [str(path.resolve())]
    if path.is_dir():
        files = sorted(str(p.resolve()) for p in path.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise SystemExit(f"error: {path}: folder holds no image files ({suffixes})")
        return files
    raise SystemExit(f"error: {path}: no such file or folder")


def cmd_train(args: argparse.Namespace) -> int:
    """Train the bundle; a bundle with ``members`` (an ensemble) trains each member in turn."""
    from unet_monai.bundle import load_workflow, run_workflow

    overrides = _overrides(args)
    if args.data is not None:
        overrides["dataset_dir"] = str(Path(args.data).resolve())
    if args.epochs is not None:
        overrides["train#trainer#max_epochs"] = args.epochs
    members = load_workflow(args.bundle, "train", **overrides).parser.get("members")
    if "member" in overrides or not isinstance(members, list):
        runs = [overrides]
    else:
        runs = [overrides | {"member": k} for k in range(len(members))]
    for run in runs:
        workflow = run_workflow(args.bundle, "train", **run)
        parser = workflow.parser
        name = parser.get_parsed_content("member_checkpoint") if "member_checkpoint" in parser else "model.pt"
        print(f"best checkpoint: {Path(parser.get_parsed_content('ckpt_dir')) / name}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from unet_monai.bundle import run_workflow

    files = _image_files(Path(args.input))
    overrides = _overrides(args)
    overrides["datalist"] = files
    overrides["output_dir"] = str(Path(args.output).resolve())
    if args.checkpoint is not None:
        overrides["ckpt_path"] = str(Path(args.checkpoint).resolve())
    checkpoint = Path(overrides.get("ckpt_path", Path(args.bundle) / "models" / "model.pt"))
    if not checkpoint.is_file():
        raise SystemExit(
            f"error: {checkpoint}: no trained weights; run `unet-monai train --bundle {args.bundle}`"
        )
    run_workflow(args.bundle, "inference", **overrides)
    print(f"{len(files)} mask(s) written to {overrides['output_dir']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from unet_monai.evaluate import evaluate_folders

    summary = evaluate_folders(
        args.pred,
        args.label,
        args.output,
        args.num_classes,
        args.class_names,
        images=args.images,
        log_dir=args.log_dir,
        binary=args.binary,
    )
    print(json.dumps({"num_cases": summary["num_cases"], "mean": summary["mean"]}, indent=2))
    print(f"per-case metrics: {Path(args.output) / 'metrics.csv'}")
    print(f"summary: {Path(args.output) / 'summary.json'}")
    for name, path in summary["figures"].items():
        case = summary["overlay_cases"].get(name.removeprefix("overlay_"))
        print(f"{name}: {path}" + (f" ({case})" if case else ""))
    if args.log_dir is not None and "training_curves" not in summary["figures"]:
        print(f"no training curves: no TensorBoard scalars in {args.log_dir}")
    return 0


def cmd_networks(args: argparse.Namespace) -> int:
    from unet_monai.networks import list_networks

    for name in list_networks():
        print(name)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    run_demo(output_dir=Path(args.output), epochs=args.epochs, num_cases=args.cases)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-monai",
        description="MONAI U-Net segmentation: train and run bundles, infer whole volumes, evaluate masks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="synthetic data -> short CPU training -> whole-volume masks -> metrics and an overlay PNG",
        description="Make synthetic volumes, train the Ronneberger U-Net bundle briefly, infer held-out "
        "volumes slice by slice, evaluate, and print where the masks, metrics and overlay are.",
    )
    demo.add_argument("--output", default="demo_output", help="folder for everything the demo writes")
    demo.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    demo.add_argument("--cases", type=int, default=24, help="synthetic volumes to make (default 24)")
    demo.set_defaults(func=cmd_demo)

    set_help = (
        "override a bundle config value, e.g. --set learning_rate=0.001 (repeatable; values read as JSON)"
    )
    train = commands.add_parser(
        "train",
        help="train a bundle (its configs/train.json)",
        description="Train a bundle as `python -m monai.bundle run --config_file configs/train.json` would; "
        "the best checkpoint goes to BUNDLE/models/model.pt.",
    )
    train.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/hippocampus_unet2d")
    train.add_argument("--data", help="dataset folder (the bundle's dataset_dir)")
    train.add_argument("--epochs", type=int, help="number of epochs (train#trainer#max_epochs)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    train.set_defaults(func=cmd_train)

    infer = commands.add_parser(
        "infer",
        help="masks for one image or volume (NIfTI, DICOM, PNG, TIFF) or a folder of them",
        description="Apply a trained bundle (configs/inference.json) to whole volumes; each mask is written "
        "as OUTPUT/<case>_seg.nii.gz with exactly the input's shape and affine.",
    )
    infer.add_argument("--bundle", required=True, help="bundle folder")
    infer.add_argument(
        "--input", required=True, help="an image file (.nii, .nii.gz, .dcm, .png, .tif) or a folder of them"
    )
    infer.add_argument("--output", required=True, help="folder for the masks")
    infer.add_argument("--checkpoint", help="weights to use (default BUNDLE/models/model.pt)")
    infer.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    infer.set_defaults(func=cmd_infer)

    evaluate = commands.add_parser(
        "evaluate",
        help="per-case and mean Dice / IoU / precision / recall / HD95 of predicted masks against labels",
        description="Match predictions (<case>.nii.gz or <case>_seg.nii.gz) to labels (<case>.nii.gz) and "
        "write OUTPUT/metrics.csv (per case) and OUTPUT/summary.json (per class and mean). HD95 is in mm, "
        "from the labels' voxel spacing. Optionally draw figures of the best, median and worst case "
        "(--images) and of the training curves (--log-dir). PNG, TIFF and DICOM masks work too.",
    )
    evaluate.add_argument("--pred", required=True, help="folder of predicted label maps")
    evaluate.add_argument("--label", required=True, help="folder of reference label maps")
    evaluate.add_argument("--output", required=True, help="folder for metrics.csv, summary.json and figures")
    evaluate.add_argument("--num-classes", type=int, help="classes including background (default: from data)")
    evaluate.add_argument("--class-names", nargs="+", help="names of the foreground classes, in label order")
    evaluate.add_argument(
        "--images",
        metavar="DIR",
        help="folder of the images (<case>.nii.gz, on the labels' grid): writes OUTPUT/overlay_best.png, "
        "overlay_median.png and overlay_worst.png, the cases of highest, median and lowest mean Dice, each "
        "at its slice with the most reference foreground (panels: image, prediction, reference)",
    )
    evaluate.add_argument(
        "--binary",
        action="store_true",
        help="binary masks: every non-zero value is foreground (masks saved as 0 / 255 PNG or TIFF)",
    )
    evaluate.add_argument(
        "--log-dir",
        metavar="DIR",
        help="TensorBoard folder of the training run (e.g. BUNDLE/runs): writes OUTPUT/training_curves.png "
        "(training loss per iteration, validation Dice per class and mean per epoch)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    networks = commands.add_parser(
        "networks", help="list the registered networks", description="List the network registry's names."
    )
    networks.set_defaults(func=cmd_networks)
    return parser


def _root_cause(error: BaseException) -> BaseException:
    """The innermost error: MONAI's config parser wraps what a config expression raised in RuntimeErrors."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:
        cause = _root_cause(error)
        if isinstance(cause, (FileNotFoundError, ValueError)):
            print(f"error: {cause}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
