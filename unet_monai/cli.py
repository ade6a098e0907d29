"""The ``unet-monai`` command line: demo, train, infer, evaluate, plan, fit, networks, pacs, serve,
node-status.

This module only parses options: each command calls its job in ``unet_monai.jobs`` with plain
arguments. Nothing heavy is imported here, so ``unet-monai --help`` answers at once.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from unet_monai import jobs

DEBUG_ENV = "UNET_MONAI_DEBUG"  # set (not 0) to show the traceback of an error instead of one line


class CommandError(SystemExit):
    """A command that cannot start: ``main`` has printed its one ``error: ...`` line; exit code 2.

    A ``SystemExit`` whose ``str`` is the message, like the ``SystemExit("error: ...")`` it replaces."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _overrides(args: argparse.Namespace) -> dict:
    """The ``--set key=value`` overrides as a dict."""
    from unet_monai.bundle import parse_override

    return dict(parse_override(text) for text in args.set)


def _checkpoint_paths(values: list[str] | None) -> list[Path]:
    """The ``--checkpoint`` files (repeated, and / or comma lists), in order; [] when none was given."""
    return [
        Path(part.strip()).resolve() for value in values or [] for part in value.split(",") if part.strip()
    ]


def run_job(job: Callable[..., int], args: argparse.Namespace) -> int:
    """Call ``job`` with the options named as its parameters: ``--set`` becomes ``overrides`` and
    ``--checkpoint`` of ``infer`` a list of paths; the job's defaults fill the rest."""
    values = dict(vars(args))
    if "set" in values:
        values["overrides"] = _overrides(args)
    if "checkpoints" in values:
        values["checkpoints"] = _checkpoint_paths(values["checkpoints"])
    parameters = inspect.signature(job).parameters
    return job(**{name: values[name] for name in parameters if name in values})


def _add_seg_options(command: argparse.ArgumentParser, set_help: str) -> None:
    """--checkpoint (one file), --set and --seg-type: how a DICOM series becomes a SEG."""
    command.add_argument("--checkpoint", help=f"weights to use (default BUNDLE/{jobs.DEFAULT_CHECKPOINT})")
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    command.add_argument(
        "--seg-type", choices=["binary", "labelmap"], default="binary", help="DICOM SEG type (default binary)"
    )


def _add_selection_options(command: argparse.ArgumentParser, prefix: str) -> None:
    """--description and --rules: which series of a study to segment, beside the default rule."""
    command.add_argument(
        "--description",
        metavar="REGEX",
        help=prefix + "only series whose SeriesDescription matches this regular expression (searched)",
    )
    command.add_argument(
        "--rules",
        metavar="FILE",
        help=prefix + "series selection rules, MONAI Deploy's DICOMSeriesSelectorOperator JSON "
        '({"selections": [{"name": ..., "conditions": {"Modality": "MR", ...}}]}); applied after the '
        "default rule, which skips localizers, SEG / SR / PR / KO objects, modalities the bundle does not "
        "take and series of too few or non-parallel slices",
    )


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
    demo.set_defaults(job=jobs.demo)

    set_help = (
        "override a bundle config value, e.g. --set learning_rate=0.001 (repeatable; values read as JSON)"
    )
    train = commands.add_parser(
        "train",
        help="train a bundle (its configs/train.json)",
        description="Train a bundle as `python -m monai.bundle run --config_file configs/train.json` would; "
        f"the best checkpoint goes to BUNDLE/{jobs.DEFAULT_CHECKPOINT}.",
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
    train.add_argument(
        "--tracking",
        choices=sorted(jobs.TRACKERS),
        help="log the run to an experiment tracker (MONAI's bundle tracking; MLflow: pip install "
        "'unet-monai[mlflow]')",
    )
    train.set_defaults(job=jobs.train)

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
        help=f"weights to use (default BUNDLE/{jobs.DEFAULT_CHECKPOINT}, and model_member<K>.pt for an "
        "ensemble). Only the files named are loaded: for an ensemble bundle give every member's checkpoint "
        "in member order (repeat --checkpoint, or a comma list), or one file holding the whole ensemble",
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
    _add_selection_options(infer, "DICOM input: ")
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
    infer.set_defaults(job=jobs.infer)

    pacs = commands.add_parser(
        "pacs",
        help="segment a series of a study on a DICOMweb PACS and store the DICOM SEG back",
        description="Find the study's image series (QIDO-RS; SEG and other non-image series skipped), "
        "pull them (WADO-RS), choose one as infer does (default rule, --rules, --description, --series-uid), "
        "segment it with the bundle and store the SEG in the same study by "
        "STOW-RS, or by C-STORE with --c-store. Prints the SEG's SOPInstanceUID and where it went.",
    )
    pacs.add_argument("--url", required=True, help="DICOMweb root, e.g. http://localhost:8042/dicom-web")
    pacs.add_argument("--study", required=True, help="StudyInstanceUID")
    pacs.add_argument("--bundle", required=True, help="bundle folder")
    pacs.add_argument("--modality", help="only series of this modality (e.g. MR)")
    pacs.add_argument("--series-uid", help="the SeriesInstanceUID to segment")
    _add_selection_options(pacs, "")
    _add_seg_options(pacs, set_help)
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
    pacs.set_defaults(job=jobs.pacs)

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
    evaluate.set_defaults(job=jobs.evaluate)

    for name, job, summary in (
        ("plan", jobs.plan, "fingerprint your dataset and write a planned bundle (no training)"),
        ("fit", jobs.fit, "plan, train and evaluate a bundle for your dataset in one command"),
    ):
        command = commands.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}: the data's spacing, intensities, classes and "
            "sizes decide the resampling, normalisation, configuration (2D / 2.5D / 3D), patch and network "
            "(plan.json says why), and the epochs fit the time budget as measured on this machine.",
        )
        command.add_argument("--data", metavar="DIR", help="MSD / nnU-Net folder with dataset.json")
        command.add_argument(
            "--images", metavar="DIR", help="folder of images (with --labels, paired by name)"
        )
        command.add_argument("--labels", metavar="DIR", help="folder of label maps")
        command.add_argument("--output", required=True, metavar="DIR", help="the bundle folder to write")
        command.add_argument(
            "--budget",
            type=float,
            default=30.0 if name == "fit" else None,
            metavar="MINUTES",
            help="training time to plan for, measured on this machine"
            + (" (default 30)" if name == "fit" else " (default: no fitting; the plan's default epochs)"),
        )
        command.add_argument(
            "--configuration",
            choices=["auto", "2d", "2.5d", "3d"],
            default="auto",
            help="auto (default): from the data; fit compares 3d and 2.5d by validation Dice when the "
            "budget allows (>= 60 minutes, half each)",
        )
        command.add_argument(
            "--device", choices=["cpu", "cuda"], help="plan for this device (default: this one)"
        )
        command.add_argument("--workers", type=int, help="processes reading the dataset (default: up to 4)")
        command.add_argument("--force", action="store_true", help="replace the configs of an existing bundle")
        if name == "fit":
            command.add_argument(
                "--folds",
                type=int,
                default=1,
                help="K > 1: K-fold cross-validation sharing the budget; the "
                "folds' models are ensembled at inference (default 1: fold 0 of 5, a fifth validates)",
            )
        command.set_defaults(job=job)

    serve = commands.add_parser(
        "serve",
        help="a listening DICOM node: receive series (C-STORE), segment each, send the SEG back",
        description="A DICOM Storage SCP that queues received instances on disk (STORE/incoming), segments "
        "each series once no instance came for --settle-seconds, and sends the SEG by C-STORE (--peer) "
        "and / or STOW-RS (--stow). Jobs survive a kill: after a restart unfinished jobs run once and "
        "finished ones are not sent again. Runs until SIGTERM / SIGINT. See OPERATIONS.md.",
    )
    serve.add_argument("--bundle", required=True, help="bundle folder")
    serve.add_argument(
        "--store", required=True, metavar="DIR", help="the node's queue: instances, jobs, SEGs"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    serve.add_argument("--aet", default="UNET_MONAI", help="the node's AE title (default UNET_MONAI)")
    serve.add_argument(
        "--allow-aet",
        action="append",
        metavar="AET",
        help="a calling AE title to accept (repeatable; required), or 'any'",
    )
    serve.add_argument("--peer", metavar="HOST:PORT:AET", help="C-STORE each SEG to this node")
    serve.add_argument("--stow", metavar="URL", help="STOW-RS each SEG to this DICOMweb root")
    serve.add_argument(
        "--settle-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="a series is complete when no instance came for this long (default 10)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=10,
        metavar="N",
        help="unfinished series at most; instances of a new series beyond are refused with status 0xA700 "
        "(default 10)",
    )
    serve.add_argument(
        "--series-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="a series still receiving after this long fails as never completed (default 3600)",
    )
    serve.add_argument(
        "--retry-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="wait before resending a SEG a peer refused, doubled each try up to 10 minutes (default 10)",
    )
    _add_seg_options(serve, set_help)
    _add_selection_options(serve, "")
    serve.set_defaults(job=jobs.serve)

    node_status = commands.add_parser(
        "node-status",
        help="the jobs of a listening node's store, whether the node runs or not",
        description="Read a node's store: whether its node runs, and each series' state (receiving, "
        "running, sending with its last error and next try, done, skipped or failed with the reason). "
        "Exit code 0 when the node runs, 1 when not (a health check).",
    )
    node_status.add_argument("--store", required=True, metavar="DIR", help="the node's --store")
    node_status.add_argument("--json", dest="json_output", action="store_true", help="print JSON")
    node_status.set_defaults(job=jobs.node_status)

    networks = commands.add_parser(
        "networks", help="list the registered networks", description="List the network registry's names."
    )
    networks.set_defaults(job=jobs.networks)
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
    # With the deploy extra, `import monai` loads Holoscan, which warns about the stack size on import;
    # nothing of Holoscan runs in these commands.
    warnings.filterwarnings("ignore", message="Current stack size .* below the recommended minimum")
    try:
        return run_job(args.job, args)
    except SystemExit as exit_:
        if not isinstance(exit_.code, str) or isinstance(exit_, CommandError):
            raise
        print(exit_.code, file=sys.stderr)
        raise CommandError(exit_.code) from None
    except jobs.JobError as error:
        print(f"error: {error}", file=sys.stderr)
        raise CommandError(f"error: {error}") from None
    except Exception as error:
        line = None if debug else user_error(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
