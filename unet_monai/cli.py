"""The ``unet-monai`` command line: demo, train, infer, evaluate, networks, pacs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from unet_monai.data.datalists import IMAGE_SUFFIXES

DEBUG_ENV = "UNET_MONAI_DEBUG"  # set (not 0) to show the traceback of an error instead of one line
# Config ids ``infer`` sets itself from its options: a --set of them would be overridden or clash.
INFER_OWN_IDS = ("datalist", "dataset#data", "output_dir")


class CommandError(SystemExit):
    """A command that cannot start: ``main`` has printed its one ``error: ...`` line; exit code 2.

    A ``SystemExit`` whose ``str`` is the message, like the ``SystemExit("error: ...")`` it replaces."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _overrides(args: argparse.Namespace) -> dict:
    """The ``--set key=value`` overrides as a dict, with those ``infer --checkpoint`` adds
    (``checkpoint_overrides``: ``ckpt_path`` and, for an ensemble, ``member_checkpoints``)."""
    from unet_monai.bundle import parse_override

    return dict(parse_override(text) for text in args.set) | getattr(args, "checkpoint_overrides", {})


def _check_bundle(bundle: str, name: str) -> None:
    """A bundle folder with ``configs/<name>.json``, else one line: ``<bundle>: no such bundle``."""
    if not (Path(bundle) / "configs" / f"{name}.json").is_file():
        raise SystemExit(f"error: {bundle}: no such bundle (no configs/{name}.json)")


def _check_input(path: Path) -> None:
    """The input exists; a dangling or looping symbolic link says so."""
    if path.is_symlink() and not path.exists():
        raise SystemExit(f"error: {path}: broken symbolic link or symbolic link loop")
    if not path.exists():
        raise SystemExit(f"error: {path}: no such file or folder")


def _check_output_outside_input(source: Path, output: Path) -> None:
    """A folder input's masks must not land in it: the next run would segment the masks (``*_seg_seg``)."""
    if not source.is_dir():
        return
    folder, target = Path(os.path.realpath(source)), Path(os.path.realpath(output))
    if target == folder or folder in target.parents:
        raise SystemExit(
            f"error: {output}: output folder equal to or inside the input folder {source}; the next run "
            "would read its masks as images to segment: choose an --output outside it"
        )


def _image_files(path: Path) -> list[str]:
    """One image file, or every image file in a folder (NIfTI, DICOM, PNG, TIFF), as absolute paths.

    A clear error otherwise."""
    suffixes = " / ".join(IMAGE_SUFFIXES)
    if path.is_file():
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            raise SystemExit(f"error: {path}: not an image file ({suffixes})")
        return [str(path.resolve())]
    if path.is_dir():
        # hidden files are skipped: e.g. the .partial-* files of an interrupted atomic write
        names = sorted(
            p
            for p in path.iterdir()
            if p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith(".")
        )
        for name in names:
            _check_input(name)  # a dangling or looping link: one line, before anything runs
        files = sorted(str(p.resolve()) for p in names)
        if not files:
            raise SystemExit(f"error: {path}: folder holds no image files ({suffixes})")
        return files
    raise SystemExit(f"error: {path}: no such file or folder")


def cmd_train(args: argparse.Namespace) -> int:
    """Train the bundle; a bundle with ``members`` (an ensemble) trains each member in turn."""
    from unet_monai.bundle import load_workflow, run_workflow

    _check_bundle(args.bundle, "train")
    overrides = _overrides(args)
    if args.data is not None:
        overrides["dataset_dir"] = str(Path(args.data).resolve())
    if args.epochs is not None:
        overrides["train#trainer#max_epochs"] = args.epochs
    if args.resume:
        overrides["resume"] = True
    members = load_workflow(args.bundle, "train", **overrides).parser.get("members")
    member = overrides.get("member")
    if member is not None and isinstance(members, list) and member not in range(len(members)):
        raise SystemExit(
            f"error: member: {member!r} is not a member of this ensemble (0 .. {len(members) - 1}: "
            f"slice axes {', '.join(str(m.get('slice_axis')) for m in members)})"
        )
    if "member" in overrides or not isinstance(members, list):
        runs = [overrides]
    else:
        runs = [overrides | {"member": k} for k in range(len(members))]
    for run in runs:
        workflow = run_workflow(args.bundle, "train", **run)
        parser = workflow.parser
        name = parser.get_parsed_content("member_checkpoint") if "member_checkpoint" in parser else "model.pt"
        best = Path(parser.get_parsed_content("ckpt_dir")) / name
        if not best.is_file():
            raise SystemExit(
                f"error: {best}: training ended without writing its checkpoint (no validation ran)"
            )
        print(f"best checkpoint: {best}")
    return 0


def _dicom_input(args: argparse.Namespace) -> bool:
    """Whether ``infer`` segments a DICOM series (``segment_dicom``) rather than image files.

    Yes for a folder with ``--format seg/both`` or a series selector; for a folder of DICOM images with
    ``--format nifti``; and, without ``--format``, for a folder of DICOM images given to a bundle that
    does not read DICOM itself (its metadata's ``data_type`` is not "dicom", e.g. a NIfTI volume bundle).
    """
    from unet_monai.dicom.infer import bundle_metadata, holds_dicom_images

    path = Path(args.input)
    if not path.is_dir():
        return False
    if args.format in ("seg", "both") or args.series_uid is not None or args.modality is not None:
        return True
    if not holds_dicom_images(path):
        return False
    return args.format == "nifti" or bundle_metadata(args.bundle).get("data_type") != "dicom"


def cmd_infer_dicom(args: argparse.Namespace) -> int:
    """``infer`` of one DICOM series: a DICOM SEG and / or a NIfTI mask named by its SeriesInstanceUID
    (made safe: the UID comes from the files)."""
    from unet_monai.dicom.infer import segment_dicom
    from unet_monai.dicom.series import shown

    formats = {"seg": ("seg",), "nifti": ("nifti",), "both": ("seg", "nifti"), None: ("seg",)}[args.format]
    result = segment_dicom(
        args.bundle,
        args.input,
        args.output,
        formats=formats,
        series_uid=args.series_uid,
        modality=args.modality,
        checkpoint=args.checkpoint,
        overrides=_overrides(args),
        seg_type=args.seg_type,
    )
    print(f"series {shown(result['series_uid'])}: labels {result['labels']}")
    for kind, path in result["files"].items():
        print(f"{kind}: {path}")
    if result["seg_sop_instance_uid"] is not None:
        print(f"SEG SOPInstanceUID: {result['seg_sop_instance_uid']}")
    return 0


def _checkpoint_paths(args: argparse.Namespace) -> list[Path]:
    """The ``--checkpoint`` files (repeated, and / or comma lists), in order; [] when none was given."""
    values = getattr(args, "checkpoints", None) or []
    return [Path(part.strip()).resolve() for value in values for part in value.split(",") if part.strip()]


def _check_checkpoints(args: argparse.Namespace, overrides: dict) -> dict:
    """Read the weights inference will load before anything runs, and return the overrides that name them.

    Only the files given are used: for an ensemble bundle (``member_checkpoints`` in its config) the
    ``--checkpoint`` files are its members in order, or one file holding the whole ensemble; without
    ``--checkpoint`` the bundle's own ``models/model.pt`` (and ``model_member<k>.pt``). Each file is
    loaded (``weights_only``) into the network the config builds, so a damaged file, a refused pickle or
    another network's weights stop here with one line naming the file and what differs.
    """
    from unet_monai.bundle import load_workflow
    from unet_monai.checkpoints import CheckpointError, load_weights
    from unet_monai.networks.axis_ensemble import AxisEnsemble, check_member_count, load_member_checkpoints

    paths = _checkpoint_paths(args)
    chosen = paths or [Path(overrides.get("ckpt_path", Path(args.bundle) / "models" / "model.pt"))]
    for path in chosen:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no trained weights; run `unet-monai train --bundle {args.bundle}`"
            )
    added = {"ckpt_path": str(chosen[0])} if paths else {}
    parser = load_workflow(args.bundle, "inference", **(overrides | added)).parser
    if "member_checkpoints" in parser:
        network = parser.get_parsed_content("network")
        if isinstance(network, AxisEnsemble):
            if paths:
                check_member_count(network, paths, "--checkpoint")
                added["member_checkpoints"] = [str(p) for p in paths]
            load_member_checkpoints(network, paths or parser.get_parsed_content("member_checkpoints"))
            return added
    if len(paths) > 1:
        raise CheckpointError(
            f"--checkpoint: {len(paths)} checkpoints given; bundle {args.bundle} has one network (no "
            "ensemble members): give one"
        )
    if "network_def" in parser:
        load_weights(parser.get_parsed_content("network_def"), chosen[0])
    return added


def cmd_infer(args: argparse.Namespace) -> int:
    """Segment image files: bad cases reported and skipped (exit 1), outputs atomic, resumable, sharded.

    Before anything is read or written: the bundle, the input, the output folder (not inside a folder
    input), the rank / shard, the overrides and the checkpoints are checked, each fault one line."""
    from unet_monai.batch_inference import run_batch_inference, shard_from, wait_for_other_ranks

    _check_bundle(args.bundle, "inference")
    source = Path(args.input)
    _check_input(source)
    _check_output_outside_input(source, Path(args.output))
    shard = shard_from(args.shard)
    user = _overrides(args)
    own = [key for key in INFER_OWN_IDS if key in user]
    if own:
        raise SystemExit(
            f"error: {own[0]}: set by infer itself (the files come from --input, the folder from --output); "
            "remove --set " + own[0]
        )
    overrides = {"dataset_dir": str(source.resolve())} | user
    dicom = _dicom_input(args)
    if not dicom and args.format in ("seg", "both"):
        raise SystemExit(f"error: {args.input}: --format {args.format} needs a folder of DICOM images")
    files = [] if dicom else _image_files(source)
    args.checkpoint_overrides = _check_checkpoints(args, overrides)
    args.checkpoint = args.checkpoint_overrides.get("ckpt_path")  # cmd_infer_dicom's single path
    if dicom:
        return cmd_infer_dicom(args)
    started = time.time() - 1.0  # file times can be coarser than the clock
    report = run_batch_inference(
        args.bundle,
        files,
        args.output,
        overrides | args.checkpoint_overrides,
        resume=args.resume,
        shard=shard,
    )
    print(f"{report.summary()} (masks in {Path(args.output).resolve()}; report {report.report_path})")
    if report.exit_code and report.world_size > 1 and args.shard is None:
        wait_for_other_ranks(args.output, report.world_size, started)  # torchrun would stop them
    return report.exit_code


def cmd_pacs(args: argparse.Namespace) -> int:
    """Segment a series of a PACS study and store the SEG back (STOW-RS, or C-STORE)."""
    from unet_monai.dicom.infer import segment_pacs_study
    from unet_monai.dicom.pacs import PacsError

    for option, seconds in (("--connect-timeout", args.connect_timeout), ("--timeout", args.timeout)):
        if not seconds > 0 or seconds == float("inf"):
            raise SystemExit(f"error: {option}: must be a positive number of seconds, got {seconds:g}")
    try:
        result = segment_pacs_study(
            args.url,
            args.study,
            args.bundle,
            modality=args.modality,
            series_uid=args.series_uid,
            checkpoint=args.checkpoint,
            overrides=_overrides(args),
            seg_type=args.seg_type,
            c_store_node=args.c_store,
            work_dir=args.work,
            timeout=args.timeout,
            connect_timeout=args.connect_timeout,
        )
    except PacsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"segmented series {result['series_uid']} of study {result['study_uid']}: labels {result['labels']}"
    )
    print(f"SEG SOPInstanceUID: {result['seg_sop_instance_uid']} (series {result['seg_series_uid']})")
    print(f"stored on: {result['destination']}")
    if args.work is not None:
        print(f"SEG file: {result['seg']}")
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
        bundle=args.bundle,
        chill=args.chill,
    )
    print(summary["classes_source"])
    unscored = summary["cases_without_prediction"]
    if unscored:
        shown = ", ".join(unscored[:10]) + (f" and {len(unscored) - 10} more" if len(unscored) > 10 else "")
        print(f"--chill: {len(unscored)} case(s) without a prediction left out of the scores: {shown}")
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
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue each run from its last per-epoch checkpoint (BUNDLE/models/resume.pt; "
        "resume_member<K>.pt for ensemble members): weights, optimiser, LR schedule, epoch, best metric",
    )
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    train.set_defaults(func=cmd_train)

    infer = commands.add_parser(
        "infer",
        help="masks for one image or volume (NIfTI, DICOM, PNG, TIFF) or a folder of them",
        description="Apply a trained bundle (configs/inference.json) to whole volumes; each mask is written "
        "as OUTPUT/<case>_seg.nii.gz with exactly the input's shape and affine. A folder holding one "
        "DICOM series (for a volume bundle, or with --format) gives OUTPUT/<SeriesInstanceUID>_seg.dcm, "
        "a DICOM SEG referencing the series' instances, and / or <SeriesInstanceUID>_seg.nii.gz. A file that "
        "cannot be read or segmented is reported (<file>: <problem>) and skipped, the others are written "
        "(each renamed into place when complete), OUTPUT/inference_report.json lists every case, and the "
        "exit code is 1 when any case failed.",
    )
    infer.add_argument("--bundle", required=True, help="bundle folder")
    infer.add_argument(
        "--input",
        required=True,
        help="an image file (.nii, .nii.gz, .dcm, .png, .tif), a folder of them, or a DICOM series folder",
    )
    infer.add_argument("--output", required=True, help="folder for the masks")
    infer.add_argument(
        "--checkpoint",
        dest="checkpoints",
        action="append",
        metavar="FILE[,FILE...]",
        help="weights to use (default BUNDLE/models/model.pt, and model_member<K>.pt for an ensemble). Only "
        "the files named are loaded: for an ensemble bundle give every member's checkpoint in member order "
        "(repeat --checkpoint, or a comma list), or one file holding the whole ensemble",
    )
    infer.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    infer.add_argument(
        "--format",
        choices=["seg", "nifti", "both"],
        help="for a folder of DICOM images (one series): OUTPUT/<SeriesInstanceUID>_seg.dcm (DICOM SEG, the "
        "default), _seg.nii.gz (NIfTI on the series' grid) or both; other input gives NIfTI-style masks",
    )
    infer.add_argument("--series-uid", help="DICOM input: the SeriesInstanceUID to segment")
    infer.add_argument("--modality", help="DICOM input: only series of this modality (e.g. MR)")
    infer.add_argument(
        "--seg-type", choices=["binary", "labelmap"], default="binary", help="DICOM SEG type (default binary)"
    )
    infer.add_argument(
        "--resume",
        action="store_true",
        help="skip cases whose mask already exists (masks are renamed into place when complete, so an "
        "existing one is whole); without it existing masks are overwritten",
    )
    infer.add_argument(
        "--shard",
        metavar="I/N",
        help="process cases[I::N] of the sorted inputs (0 <= I < N; a case is a file, or a patient folder "
        "for a multi-modal bundle), for N independent jobs; under torchrun each rank takes its share from "
        "RANK / WORLD_SIZE without this option",
    )
    infer.set_defaults(func=cmd_infer)

    pacs = commands.add_parser(
        "pacs",
        help="segment a series of a study on a DICOMweb PACS and store the DICOM SEG back",
        description="Find the study's image series (QIDO-RS; SEG and other non-image series skipped), "
        "pull the chosen one (WADO-RS), segment it with the bundle and store the SEG in the same study by "
        "STOW-RS, or by C-STORE with --c-store. Prints the SEG's SOPInstanceUID and where it went.",
    )
    pacs.add_argument("--url", required=True, help="DICOMweb root, e.g. http://localhost:8042/dicom-web")
    pacs.add_argument("--study", required=True, help="StudyInstanceUID")
    pacs.add_argument("--bundle", required=True, help="bundle folder")
    pacs.add_argument("--modality", help="only series of this modality (e.g. MR)")
    pacs.add_argument("--series-uid", help="the SeriesInstanceUID to segment (needed when several match)")
    pacs.add_argument("--checkpoint", help="weights to use (default BUNDLE/models/model.pt)")
    pacs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    pacs.add_argument(
        "--seg-type", choices=["binary", "labelmap"], default="binary", help="DICOM SEG type (default binary)"
    )
    pacs.add_argument("--c-store", metavar="HOST:PORT:AET", help="store the SEG by C-STORE to this node")
    pacs.add_argument("--work", metavar="DIR", help="keep the pulled series and the SEG in this folder")
    pacs.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to open a connection to the PACS (DICOMweb and C-STORE; default 5)",
    )
    pacs.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds the PACS may stay silent: waiting for an answer, or for the next bytes of one (not a "
        "limit on a whole transfer); a timeout is not retried (default 60)",
    )
    pacs.set_defaults(func=cmd_pacs)

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
    evaluate.add_argument(
        "--num-classes",
        type=int,
        help="classes including background (default: from --class-names or --bundle, else inferred from the "
        "reference labels when they are 0 .. K for a small K; label values outside the classes are an error)",
    )
    evaluate.add_argument("--class-names", nargs="+", help="names of the foreground classes, in label order")
    evaluate.add_argument(
        "--bundle",
        metavar="DIR",
        help="take the classes and their names from this bundle's configs/metadata.json",
    )
    evaluate.add_argument(
        "--images",
        metavar="DIR",
        help="folder of the images (<case>.nii.gz, on the labels' grid): writes OUTPUT/overlay_best.png, "
        "overlay_median.png and overlay_worst.png, the cases of highest, median and lowest mean Dice, each "
        "at its slice with the most reference foreground (panels: image, prediction, reference)",
    )
    evaluate.add_argument(
        "--chill",
        action="store_true",
        help="score only the cases that have a prediction (as nnU-Net's --chill) and list the others; "
        "without it a reference without a prediction is an error",
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
    debug_help = (
        f"show the full traceback of an error instead of one line (also: environment variable {DEBUG_ENV}=1)"
    )
    parser.add_argument("--debug", action="store_true", help=debug_help)
    for command in commands.choices.values():  # also accepted after the command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def _root_cause(error: BaseException) -> BaseException:
    """The innermost error: MONAI's config parser and ``Compose`` wrap what a config expression or a
    transform raised in RuntimeErrors. A ``BadInputError`` (its message names the file) ends the walk."""
    from unet_monai.checks import BadInputError

    while error.__cause__ is not None and not isinstance(error, BadInputError):
        error = error.__cause__
    return error


def _one_line(error: BaseException) -> str:
    """The error as one line: an OS error as ``<path>: <reason>``, others their message's first line."""
    from unet_monai.io import error_line

    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return error_line(error)


def _config_id(error: BaseException) -> str | None:
    """The id of the innermost bundle config item (expression or component) that was being evaluated
    when ``error`` was raised, from the frames of its chain (MONAI's messages do not name it)."""
    from monai.bundle import ConfigItem
    from monai.bundle.utils import ID_SEP_KEY

    found: str | None = None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        trace = current.__traceback__
        while trace is not None:
            item = trace.tb_frame.f_locals.get("self")
            if isinstance(item, ConfigItem) and item.get_id():
                found = item.get_id().replace(ID_SEP_KEY, "#")
            trace = trace.tb_next
        current = current.__cause__ or current.__context__
    return found


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
    )


def user_error(error: BaseException) -> str | None:
    """One line for an error the user can act on, None for what looks like a bug (shown as a traceback).

    User errors: bad input or settings (``ValueError``, including ``BadInputError``, ``CheckpointError``
    and ``OverrideError``), file-system errors (``OSError``), running out of memory (with the size asked
    for, when the error says it), and a bundle config item that fails to evaluate (named by its id)."""
    cause = _root_cause(error)
    if _is_out_of_memory(cause):
        detail = _one_line(cause) if str(cause).strip() else "no size reported"
        return (
            f"out of memory ({type(cause).__name__}: {detail}); try a smaller batch or ROI, fewer "
            "processes, or a machine with more memory"
        )
    if isinstance(cause, (OSError, ValueError)):
        return _one_line(cause)
    key = _config_id(error)
    if key is not None and key.split("#")[0] not in ("run", "initialize", "finalize"):
        return f"{key}: config value fails to evaluate ({type(cause).__name__}: {_one_line(cause)})"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run a command; every error a user can act on is one ``error: ...`` line on stderr with exit code 2.

    Bad input or settings (a ValueError or an OS error such as a missing file or an unwritable folder,
    however deep MONAI wrapped it), a config value that fails to evaluate, running out of memory: one line
    and 2 (batch inference returns 1 when some cases failed). A command that cannot start raises
    ``CommandError`` (a ``SystemExit`` with code 2) after printing its line. Anything else is a bug and
    keeps its traceback; ``--debug`` (or ``UNET_MONAI_DEBUG=1``) shows the traceback of every error."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return args.func(args)
    except SystemExit as exit_:
        if not isinstance(exit_.code, str) or isinstance(exit_, CommandError):
            raise
        print(exit_.code, file=sys.stderr)
        raise CommandError(exit_.code) from None
    except Exception as error:
        line = None if debug else user_error(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
