"""The jobs behind ``unet-monai``: train, infer (a DICOM series or image files), pacs, evaluate, demo.

Each job takes plain arguments, decides what runs (DICOM or files, which checkpoints, which workflow
runs) and prints what it made. What stops a job before it starts is a ``JobError`` (one line, which
``unet_monai.cli`` prints as ``error: ...`` with exit code 2). Torch and MONAI are imported inside the
jobs, so that ``unet-monai --help`` loads neither.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unet_monai.io import DEFAULT_CHECKPOINT, IMAGE_SUFFIXES, trained_weights

# Config ids ``infer`` sets itself from its options: a --set of them would be overridden or clash.
INFER_OWN_IDS = ("datalist", "dataset#data", "output_dir")
# Experiment trackers ``train`` can attach (MONAI's bundle tracking settings) and the package each needs.
TRACKERS = {"mlflow": "mlflow"}


class JobError(Exception):
    """A job that cannot start: the message is one line for the user, starting with what is wrong."""


def check_bundle(bundle: str | Path, name: str) -> None:
    """A bundle folder with ``configs/<name>.json``, else one line: ``<bundle>: no such bundle``."""
    if not (Path(bundle) / "configs" / f"{name}.json").is_file():
        raise JobError(f"{bundle}: no such bundle (no configs/{name}.json)")


def check_input(path: Path) -> None:
    """The input exists; a dangling or looping symbolic link says so."""
    if path.is_symlink() and not path.exists():
        raise JobError(f"{path}: broken symbolic link or symbolic link loop")
    if not path.exists():
        raise JobError(f"{path}: no such file or folder")


def check_output_outside_input(source: Path, output: Path) -> None:
    """A folder input's masks must not land in it: the next run would segment the masks (``*_seg_seg``)."""
    if not source.is_dir():
        return
    folder, target = Path(os.path.realpath(source)), Path(os.path.realpath(output))
    if target == folder or folder in target.parents:
        raise JobError(
            f"{output}: output folder equal to or inside the input folder {source}; the next run "
            "would read its masks as images to segment: choose an --output outside it"
        )


def image_files(path: Path) -> list[str]:
    """One image file, or every image file in a folder (NIfTI, DICOM, PNG, TIFF), as absolute paths.

    A clear error otherwise."""
    suffixes = " / ".join(IMAGE_SUFFIXES)
    if path.is_file():
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            raise JobError(f"{path}: not an image file ({suffixes})")
        return [str(path.resolve())]
    if path.is_dir():
        # hidden files are skipped: e.g. the .partial-* files of an interrupted atomic write
        names = sorted(
            p
            for p in path.iterdir()
            if p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith(".")
        )
        for name in names:
            check_input(name)  # a dangling or looping link: one line, before anything runs
        files = sorted(str(p.resolve()) for p in names)
        if not files:
            raise JobError(f"{path}: folder holds no image files ({suffixes})")
        return files
    raise JobError(f"{path}: no such file or folder")


def check_tracker(tracking: str | None) -> None:
    """A tracker ``train`` knows whose package is installed, else one line saying what to install."""
    if tracking is None:
        return
    if tracking not in TRACKERS:
        raise JobError(f"--tracking {tracking}: unknown tracker (known: {', '.join(sorted(TRACKERS))})")
    if importlib.util.find_spec(TRACKERS[tracking]) is None:
        raise JobError(f"--tracking {tracking} needs MLflow: pip install 'unet-monai[{tracking}]'")


def _run_tracked(bundle: str | Path, tracking: str, overrides: Mapping[str, Any]) -> Any:
    """``run_workflow`` of a training with MONAI's settings for ``tracking`` patched into its config."""
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    from unet_monai.bundle import check_workflow, load_workflow

    workflow = load_workflow(bundle, "train", **overrides)
    workflow.patch_bundle_tracking(parser=workflow.parser, settings=DEFAULT_EXP_MGMT_SETTINGS[tracking])
    workflow.initialize()
    check_workflow(workflow, "train")
    workflow.run()
    workflow.finalize()
    return workflow


def train(
    bundle: str,
    data: str | None = None,
    epochs: int | None = None,
    resume: bool = False,
    overrides: Mapping[str, Any] | None = None,
    tracking: str | None = None,
) -> int:
    """Train the bundle; a bundle with ``members`` (an ensemble) trains each member in turn.

    Prints each run's best checkpoint; a run that ended without writing it is a ``JobError``."""
    from unet_monai.bundle import load_workflow, run_workflow

    check_bundle(bundle, "train")
    check_tracker(tracking)
    overrides = dict(overrides or {})
    if data is not None:
        overrides["dataset_dir"] = str(Path(data).resolve())
    if epochs is not None:
        overrides["train#trainer#max_epochs"] = epochs
    if resume:
        overrides["resume"] = True
    members = load_workflow(bundle, "train", **overrides).parser.get("members")
    member = overrides.get("member")
    if member is not None and isinstance(members, list) and member not in range(len(members)):
        raise JobError(
            f"member: {member!r} is not a member of this ensemble (0 .. {len(members) - 1}: "
            f"slice axes {', '.join(str(m.get('slice_axis')) for m in members)})"
        )
    if "member" in overrides or not isinstance(members, list):
        runs = [overrides]
    else:
        runs = [overrides | {"member": k} for k in range(len(members))]
    for run in runs:
        if tracking is None:
            workflow = run_workflow(bundle, "train", **run)
        else:
            workflow = _run_tracked(bundle, tracking, run)
        parser = workflow.parser
        name = parser.get_parsed_content("member_checkpoint") if "member_checkpoint" in parser else "model.pt"
        best = Path(parser.get_parsed_content("ckpt_dir")) / name
        if not best.is_file():
            raise JobError(f"{best}: training ended without writing its checkpoint (no validation ran)")
        print(f"best checkpoint: {best}")
    return 0


def is_dicom_input(
    bundle: str,
    source: Path,
    format: str | None = None,
    series_uid: str | None = None,
    modality: str | None = None,
    selectors: Sequence[str | None] = (),
) -> bool:
    """Whether ``infer`` segments a DICOM series (``segment_dicom``) rather than image files.

    Yes for a folder with ``format`` seg / both or a series selector (``series_uid``, ``modality``, or
    any of ``selectors``: a description regex, a rules file); for a folder of DICOM images with
    ``format`` nifti; and, without ``format``, for a folder of DICOM images given to a bundle that does not
    read DICOM itself (its metadata's ``data_type`` is not "dicom", e.g. a NIfTI volume bundle).
    """
    from unet_monai.dicom.infer import bundle_metadata, holds_dicom_images

    if not source.is_dir():
        return False
    if format in ("seg", "both") or any(v is not None for v in (series_uid, modality, *selectors)):
        return True
    if not holds_dicom_images(source):
        return False
    return format == "nifti" or bundle_metadata(bundle).get("data_type") != "dicom"


def check_checkpoints(bundle: str, checkpoints: Sequence[Path], overrides: Mapping[str, Any]) -> dict:
    """Read the weights inference will load before anything runs, and return the overrides that name them.

    Only the files given are used: for an ensemble bundle (``member_checkpoints`` in its config) the
    ``checkpoints`` are its members in order, or one file holding the whole ensemble; without any, the
    bundle's own ``DEFAULT_CHECKPOINT`` (and ``model_member<k>.pt``). Each file is loaded
    (``weights_only``) into the network the config builds, so a damaged file, a refused pickle or another
    network's weights stop here with one line naming the file and what differs.
    """
    from unet_monai.bundle import load_workflow
    from unet_monai.checkpoints import CheckpointError, load_weights
    from unet_monai.networks.ensemble import AxisEnsemble, check_member_count, load_member_checkpoints

    paths = list(checkpoints)
    chosen = [trained_weights(bundle, path) for path in paths] or [
        trained_weights(bundle, None, dict(overrides))
    ]
    added = {"ckpt_path": str(chosen[0])} if paths else {}
    parser = load_workflow(bundle, "inference", **(dict(overrides) | added)).parser
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
            f"--checkpoint: {len(paths)} checkpoints given; bundle {bundle} has one network (no "
            "ensemble members): give one"
        )
    if "network_def" in parser:
        load_weights(parser.get_parsed_content("network_def"), chosen[0])
    return added


def print_selection(selection: Any) -> None:
    """The series taken and why, then each series skipped and why (UIDs and descriptions only)."""
    print(f"series {selection.series.summary()}: {selection.reason}")
    for info, reason in selection.skipped:
        print(f"  skipped series {info.summary()}: {reason}")


def infer_dicom(
    bundle: str,
    source: Path,
    output: str,
    checkpoint: str | None,
    overrides: Mapping[str, Any],
    format: str | None = None,
    series_uid: str | None = None,
    modality: str | None = None,
    seg_type: str = "binary",
    description: str | None = None,
    rules: str | None = None,
) -> int:
    """One DICOM series: a DICOM SEG and / or a NIfTI mask named by its SeriesInstanceUID (made safe: the
    UID comes from the files)."""
    from unet_monai.dicom.infer import segment_dicom
    from unet_monai.dicom.series import shown

    formats = {"seg": ("seg",), "nifti": ("nifti",), "both": ("seg", "nifti"), None: ("seg",)}[format]
    result = segment_dicom(
        bundle,
        source,
        output,
        formats=formats,
        series_uid=series_uid,
        modality=modality,
        description=description,
        rules=rules,
        checkpoint=checkpoint,
        overrides=dict(overrides),
        seg_type=seg_type,
    )
    print_selection(result["selection"])
    print(f"series {shown(result['series_uid'])}: labels {result['labels']}")
    for kind, path in result["files"].items():
        print(f"{kind}: {path}")
    if result["seg_sop_instance_uid"] is not None:
        print(f"SEG SOPInstanceUID: {result['seg_sop_instance_uid']}")
    return 0


def infer(
    bundle: str,
    input: str,
    output: str,
    checkpoints: Sequence[Path] = (),
    overrides: Mapping[str, Any] | None = None,
    format: str | None = None,
    series_uid: str | None = None,
    modality: str | None = None,
    seg_type: str = "binary",
    resume: bool = False,
    shard: str | None = None,
    description: str | None = None,
    rules: str | None = None,
) -> int:
    """Segment image files, or one DICOM series: bad cases reported and skipped (exit 1), outputs atomic,
    resumable, sharded.

    Before anything is read or written: the bundle, the input, the output folder (not inside a folder
    input), the rank / shard, the overrides and the checkpoints are checked, each fault one line."""
    from unet_monai.batch_inference import run_batch_inference, shard_from, wait_for_other_ranks

    check_bundle(bundle, "inference")
    source = Path(input)
    check_input(source)
    check_output_outside_input(source, Path(output))
    shard_range = shard_from(shard)
    user = dict(overrides or {})
    own = [key for key in INFER_OWN_IDS if key in user]
    if own:
        raise JobError(
            f"{own[0]}: set by infer itself (the files come from --input, the folder from --output); "
            "remove --set " + own[0]
        )
    run_overrides = {"dataset_dir": str(source.resolve())} | user
    dicom = is_dicom_input(bundle, source, format, series_uid, modality, (description, rules))
    if not dicom and format in ("seg", "both"):
        raise JobError(f"{input}: --format {format} needs a folder of DICOM images")
    files = [] if dicom else image_files(source)
    weights = check_checkpoints(bundle, checkpoints, run_overrides)
    if dicom:
        checkpoint = weights.get("ckpt_path")
        return infer_dicom(
            bundle,
            source,
            output,
            checkpoint,
            user | weights,
            format,
            series_uid,
            modality,
            seg_type,
            description,
            rules,
        )
    started = time.time() - 1.0  # file times can be coarser than the clock
    report = run_batch_inference(
        bundle, files, output, run_overrides | weights, resume=resume, shard=shard_range
    )
    print(f"{report.summary()} (masks in {Path(output).resolve()}; report {report.report_path})")
    if report.exit_code and report.world_size > 1 and shard is None:
        wait_for_other_ranks(output, report.world_size, started)  # torchrun would stop them
    return report.exit_code


def pacs(
    url: str,
    study: str,
    bundle: str,
    modality: str | None = None,
    series_uid: str | None = None,
    checkpoint: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seg_type: str = "binary",
    c_store: str | None = None,
    description: str | None = None,
    rules: str | None = None,
    work: str | None = None,
    timeout: float = 60.0,
    connect_timeout: float = 5.0,
) -> int:
    """Segment a series of a PACS study and store the SEG back (STOW-RS, or C-STORE)."""
    from unet_monai.dicom.infer import segment_pacs_study
    from unet_monai.dicom.pacs import PacsError

    for option, seconds in (("--connect-timeout", connect_timeout), ("--timeout", timeout)):
        if not seconds > 0 or seconds == float("inf"):
            raise JobError(f"{option}: must be a positive number of seconds, got {seconds:g}")
    try:
        result = segment_pacs_study(
            url,
            study,
            bundle,
            modality=modality,
            series_uid=series_uid,
            description=description,
            rules=rules,
            checkpoint=checkpoint,
            overrides=dict(overrides or {}),
            seg_type=seg_type,
            c_store_node=c_store,
            work_dir=work,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
    except PacsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_selection(result["selection"])
    print(
        f"segmented series {result['series_uid']} of study {result['study_uid']}: labels {result['labels']}"
    )
    print(f"SEG SOPInstanceUID: {result['seg_sop_instance_uid']} (series {result['seg_series_uid']})")
    print(f"stored on: {result['destination']}")
    if work is not None:
        print(f"SEG file: {result['seg']}")
    return 0


def evaluate(
    pred: str,
    label: str,
    output: str,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    images: str | None = None,
    log_dir: str | None = None,
    binary: bool = False,
    bundle: str | None = None,
    chill: bool = False,
) -> int:
    """Score a folder of predicted masks against the labels; prints the mean and where the files went."""
    from unet_monai.evaluate import evaluate_folders

    summary = evaluate_folders(
        pred,
        label,
        output,
        num_classes,
        class_names,
        images=images,
        log_dir=log_dir,
        binary=binary,
        bundle=bundle,
        chill=chill,
    )
    print(summary["classes_source"])
    unscored = summary["cases_without_prediction"]
    if unscored:
        shown = ", ".join(unscored[:10]) + (f" and {len(unscored) - 10} more" if len(unscored) > 10 else "")
        print(f"--chill: {len(unscored)} case(s) without a prediction left out of the scores: {shown}")
    print(json.dumps({"num_cases": summary["num_cases"], "mean": summary["mean"]}, indent=2))
    print(f"per-case metrics: {Path(output) / 'metrics.csv'}")
    print(f"summary: {Path(output) / 'summary.json'}")
    for name, path in summary["figures"].items():
        case = summary["overlay_cases"].get(name.removeprefix("overlay_"))
        print(f"{name}: {path}" + (f" ({case})" if case else ""))
    if log_dir is not None and "training_curves" not in summary["figures"]:
        print(f"no training curves: no TensorBoard scalars in {log_dir}")
    return 0


def _dataset_arguments(data: str | None, images: str | None, labels: str | None) -> dict[str, str | None]:
    """``--data DIR`` (an MSD / nnU-Net folder) or ``--images DIR --labels DIR``, checked."""
    if data is not None and (images is not None or labels is not None):
        raise JobError("give --data DIR, or --images DIR and --labels DIR, not both")
    if data is None and (images is None or labels is None):
        raise JobError("give --data DIR (a folder with dataset.json), or --images DIR and --labels DIR")
    for folder in (data, images, labels):
        if folder is not None and not Path(folder).is_dir():
            raise JobError(f"{folder}: no such folder")
    return {"data_dir": data, "images_dir": images, "labels_dir": labels}


def _command_line(name: str, output: str, **options: Any) -> str:
    """The command that made a bundle, for its README (options left at None are left out)."""
    parts = [f"unet-monai {name}"]
    parts += [
        f"--{key.replace('_', '-')} {value}" for key, value in options.items() if value not in (None, False)
    ]
    return " ".join([*parts, f"--output {output}"])


def plan(
    output: str,
    data: str | None = None,
    images: str | None = None,
    labels: str | None = None,
    budget: float | None = None,
    configuration: str = "auto",
    device: str | None = None,
    workers: int | None = None,
    force: bool = False,
) -> int:
    """Fingerprint a dataset, plan, and write a bundle (epochs fitted to ``budget`` minutes if given)."""
    from unet_monai.planning.plan import summary_lines
    from unet_monai.planning.planner import plan_bundle

    dataset = _dataset_arguments(data, images, labels)
    command = _command_line(
        "plan",
        output,
        data=data,
        images=images,
        labels=labels,
        budget=budget,
        configuration=None if configuration == "auto" else configuration,
    )
    result = plan_bundle(
        output,
        **dataset,
        budget_minutes=budget,
        configuration=configuration,
        device=device,
        workers=workers,
        command=command,
        overwrite=force,
    )
    print("\n".join(summary_lines(result)))
    print(f"bundle: {output} (plan.json, fingerprint.json, docs/README.md)")
    print(f"train it: unet-monai train --bundle {output}")
    return 0


def fit(
    output: str,
    data: str | None = None,
    images: str | None = None,
    labels: str | None = None,
    budget: float = 30.0,
    folds: int = 1,
    configuration: str = "auto",
    device: str | None = None,
    workers: int | None = None,
    force: bool = False,
) -> int:
    """Plan, train and evaluate in one command; prints the validation Dice and where the model is."""
    from unet_monai.planning.fit import REPORT
    from unet_monai.planning.fit import fit as fit_dataset

    dataset = _dataset_arguments(data, images, labels)
    command = _command_line(
        "fit", output, data=data, images=images, labels=labels, budget=budget, folds=folds
    )
    report = fit_dataset(
        output,
        **dataset,
        budget_minutes=budget,
        folds=folds,
        configuration=configuration,
        device=device,
        workers=workers,
        command=command,
        overwrite=force,
    )
    for entry in report["per_fold"]:
        print(
            f"fold {entry['fold']}: validation Dice {entry['metrics']['val_mean_dice']:.4f} after "
            f"{entry['epochs']} epochs ({entry['train_seconds']:.0f} s); evaluation in {entry['evaluation']}"
        )
    if "configuration_choice" in report:
        print(f"configuration: {report['configuration_choice']['why']}")
    print(
        f"mean validation Dice {report['mean_val_dice']:.4f} ({report['configuration']}); report: "
        f"{Path(output) / REPORT}"
    )
    print(
        f"model: {report['model']}; infer: unet-monai infer --bundle {output} --input IMAGES --output MASKS"
    )
    return 0


def networks() -> int:
    """Print the network registry's names."""
    from unet_monai.networks import list_networks

    for name in list_networks():
        print(name)
    return 0


def demo(output: str, epochs: int, cases: int) -> int:
    """Synthetic data -> short training -> masks -> metrics and an overlay (``pipelines.demo``)."""
    from pipelines.demo import run_demo

    run_demo(output_dir=Path(output), epochs=epochs, num_cases=cases)
    return 0


__all__ = [
    "DEFAULT_CHECKPOINT",
    "JobError",
    "demo",
    "evaluate",
    "fit",
    "infer",
    "networks",
    "pacs",
    "plan",
    "train",
]


def serve(
    bundle: str,
    store: str,
    allow_aet: Sequence[str] | None = None,
    port: int = 11112,
    host: str = "127.0.0.1",
    aet: str = "UNET_MONAI",
    peer: str | None = None,
    stow: str | None = None,
    settle_seconds: float = 10.0,
    max_queue: int = 10,
    series_timeout: float = 3600.0,
    retry_seconds: float = 10.0,
    checkpoint: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seg_type: str = "binary",
    rules: str | None = None,
    description: str | None = None,
) -> int:
    """A listening DICOM node on ``host:port`` until SIGTERM / SIGINT (:mod:`unet_monai.node`).

    Before it listens, the weights are loaded into the bundle's network with the overrides, as ``infer``
    does: a bad ``--set`` or checkpoint stops here in one line, and MONAI is imported once, not while the
    first series waits."""
    from unet_monai.node.serve import run_node

    check_bundle(bundle, "inference")
    weights = check_checkpoints(bundle, [Path(checkpoint)] if checkpoint else [], dict(overrides or {}))
    checkpoint = weights.get("ckpt_path")  # the file named, resolved; None: the bundle's own
    return run_node(
        bundle=bundle,
        store=store,
        allow_aet=allow_aet,
        port=port,
        host=host,
        aet=aet,
        peer=peer,
        stow=stow,
        settle_seconds=settle_seconds,
        max_queue=max_queue,
        series_timeout=series_timeout,
        retry_seconds=retry_seconds,
        checkpoint=checkpoint,
        overrides=dict(overrides or {}),
        seg_type=seg_type,
        job_error=JobError,
        rules=rules,
        description=description,
    )


def node_status(store: str, json_output: bool = False) -> int:
    """Print a node store's jobs (running or not); exit code 0 when its node runs, 1 when not."""
    from unet_monai.node.status import node_status as read_status
    from unet_monai.node.status import status_lines

    if not Path(store).is_dir():
        raise JobError(f"{store}: no such node store")
    status = read_status(store)
    if json_output:
        print(json.dumps(status, indent=2))
    else:
        print("\n".join(status_lines(status)))
    return 0 if status["running"] else 1
