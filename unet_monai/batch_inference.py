"""Batch inference of many files with a bundle's ``configs/inference.json``, robust to bad cases.

One workflow is built (network and checkpoint loaded once) and its ``SupervisedEvaluator`` runs over
every case, as ``python -m monai.bundle run`` does, with two guards: the dataset turns a case whose
loading or preprocessing raises into a failure record, and the evaluator's ``iteration_update``
(MONAI's hook for the per-iteration function) runs its default ``_iteration`` and records what
inference, postprocessing or writing raised. A bad case is reported as ``<file>: <problem>`` (the
root cause) and skipped; every good case is written, atomically (``AtomicSaveImaged``).

``resume=True`` skips cases whose output already exists and loads (``output_problem``: a NIfTI's
voxels are all decompressed, a DICOM file parsed); an output that does not load (0 bytes, truncated,
not the format its name says, e.g. left by an older version or another program) is segmented again
and the case's ``note`` says so. A full disk (or quota, or file-size limit) stops the run at the first
mask it cannot write: the next cases would fail the same way; the ``OutputError`` naming that mask
leaves ``run_batch_inference`` after the report is written (if it still fits), and ``--resume`` after
freeing space completes the batch.

``shard=(rank, world_size)`` processes ``cases[rank::world_size]`` (a case is an item of the
bundle's dataset: a file, or a patient folder for a multi-modal bundle), as each ``torchrun`` rank does
(``RANK`` / ``WORLD_SIZE``); shares are disjoint and two cases that would give the same output name
are refused, so no two processes ever write the same file. Each run writes a JSON
report in the output folder: ``inference_report.json``, or ``inference_report.rank<r>.json``.
"""

from __future__ import annotations

import gzip
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, SaveImaged
from tqdm import tqdm

from unet_monai.bundle import load_workflow
from unet_monai.checks import BadInputError
from unet_monai.io import OutputError, error_line, is_disk_full, stale_partials, write_json

CASE_KEY = "batch_case"
ERROR_KEY = "batch_error"
EXIT_FAILED = 1  # some cases failed (the others were written); 2 is the CLI's code for a bad command


@dataclass
class CaseResult:
    """One input file: ``written``, ``skipped`` (its output existed, with ``resume``) or ``failed``;
    ``note`` says why an existing output was segmented again (``resume``)."""

    file: str
    output: str
    status: str = "pending"
    error: str | None = None
    note: str | None = None


@dataclass
class BatchReport:
    """The cases of one process (one shard) and where its JSON report went."""

    cases: list[CaseResult]
    rank: int = 0
    world_size: int = 1
    report_path: str = ""

    def count(self) -> dict[str, int]:
        return {
            status: sum(c.status == status for c in self.cases) for status in ("written", "skipped", "failed")
        }

    def summary(self) -> str:
        counts = self.count()
        prefix = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        return f"{prefix}{counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed"

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.count()["failed"] else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "summary": self.count(),
            "cases": [asdict(case) for case in self.cases],
        }


def root_cause(error: BaseException) -> BaseException:
    """The innermost error of a chain (MONAI wraps transform and config errors in RuntimeErrors); a
    ``BadInputError`` (the input checks' error, its message names the file) or an ``OutputError`` (names
    the output) ends the walk."""
    while error.__cause__ is not None and not isinstance(error, (BadInputError, OutputError)):
        error = error.__cause__
    return error


def problem(error: BaseException) -> str:
    """The root cause of ``error`` as one line, ``<type>: <first line of its message>`` (an
    ``OutputError`` as its message, ``<output>: could not write (<reason>)``)."""
    cause = root_cause(error)
    if isinstance(cause, OutputError):
        return str(cause)
    return error_line(cause, with_type=True)


def case_error(file: str, text: str) -> str:
    """``<file>: <problem>``; a message that already names the file is kept as it is."""
    message = text.partition(": ")[2]
    return message if Path(file).name in message else f"{file}: {text}"


class GuardedDataset(torch.utils.data.Dataset):
    """Each item of ``dataset`` with its index; ``{index, problem}`` if loading or transforming it raises."""

    def __init__(self, dataset: Sequence) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            item = self.dataset[index]
        except Exception as error:  # a failure of one case is that case's: reported and skipped
            return {CASE_KEY: index, ERROR_KEY: problem(error)}
        return {**item, CASE_KEY: index}


class CaseRecorder:
    """The evaluator's ``iteration_update``: MONAI's own iteration per case, success or failure recorded."""

    def __init__(self, cases: list[CaseResult]) -> None:
        self.cases = cases
        self.disk_full: OutputError | None = None  # the write that stopped the run, if any

    def fail(self, case: CaseResult, text: str) -> None:
        case.status = "failed"
        case.error = case_error(case.file, text)
        tqdm.write(f"error: {case.error}", file=sys.stderr)  # on its own line beside a progress bar

    def iteration(self, engine: SupervisedEvaluator, batch: Mapping) -> Any:
        case = self.cases[int(batch[CASE_KEY][0])]
        if ERROR_KEY in batch:
            self.fail(case, batch[ERROR_KEY][0])
            return []
        try:
            output = engine._iteration(engine, batch)  # MONAI's default when iteration_update is None
        except Exception as error:
            cause = root_cause(error)
            if isinstance(cause, OutputError) and is_disk_full(cause):  # every next case would fail too
                case.status = "failed"
                case.error = case_error(case.file, str(cause))
                self.disk_full = cause
                engine.terminate_epoch()  # the evaluator runs one epoch: it ends, its progress bar closes
                return []
            self.fail(case, problem(error))
            return []
        case.status = "written"
        return output


def find_saver(postprocessing: Any) -> SaveImaged:
    """The ``SaveImaged`` of a bundle's postprocessing (a Compose, possibly nested)."""
    transforms: Iterable = (
        postprocessing.transforms if isinstance(postprocessing, Compose) else [postprocessing]
    )
    for transform in transforms:
        if isinstance(transform, SaveImaged):
            return transform
        if isinstance(transform, Compose):
            try:
                return find_saver(transform)
            except ValueError:
                pass
    raise ValueError("the bundle's inference.json postprocessing has no SaveImaged: cannot name its outputs")


def output_paths(saver: SaveImaged, files: Sequence[str]) -> dict[str, Path]:
    """The file each input is saved to, named by the saver itself; two inputs with one output are refused."""
    outputs: dict[str, Path] = {}
    owner: dict[Path, str] = {}
    for file in files:
        save = saver.saver
        path = Path(save.folder_layout.filename(**save.fname_formatter({"filename_or_obj": file}, save)))
        if path in owner:
            raise ValueError(f"{owner[path]} and {file} would both be written to {path}: rename one of them")
        owner[path] = file
        outputs[file] = path
    return outputs


def output_problem(path: Path) -> str | None:
    """Why an existing output does not load (``None`` if it does): a NIfTI is opened and every voxel read
    (a truncated ``.gz`` fails there), a DICOM file parsed, another ``.gz`` decompressed to its end, any
    other file must be non-empty."""
    name = path.name.lower()
    try:
        if path.stat().st_size == 0:
            return "empty file"
        if name.endswith((".nii", ".nii.gz")):
            np.asarray(nib.load(path).dataobj)
        elif name.endswith(".dcm"):
            dataset = pydicom.dcmread(path)
            if "PixelData" in dataset:
                _ = dataset.PixelData
        elif name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 20):
                    pass
    except Exception as error:
        return error_line(error, with_type=True)
    return None


def wait_for_other_ranks(
    output_dir: str | Path, world_size: int, since: float, poll_s: float = 0.5, timeout_s: float | None = None
) -> bool:
    """Wait until every rank has written this run's report (modified at or after ``since``).

    torchrun stops every other rank as soon as one exits non-zero, so a rank with failed cases that
    exited at once could cut another rank's share short: it waits for the others first. Returns whether
    all reports came (``False`` after ``timeout_s``; ``None`` waits as long as torchrun lets it).
    """
    folder = Path(output_dir)
    reports = [folder / report_name(rank, world_size) for rank in range(world_size)]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not all(path.is_file() and path.stat().st_mtime >= since for path in reports):
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def report_name(rank: int, world_size: int) -> str:
    return "inference_report.json" if world_size == 1 else f"inference_report.rank{rank}.json"


def shard_from(text: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """``(rank, world_size)`` from ``--shard I/N``, else torchrun's ``RANK`` / ``WORLD_SIZE``, else (0, 1).

    The torchrun variables are checked (``unet_monai.distributed.rank_from_environment``): a rank outside
    ``0 .. WORLD_SIZE-1``, or a value that is not an integer, is a ``ValueError`` naming the variable."""
    from unet_monai.distributed import rank_from_environment

    env_rank, env_world, _ = rank_from_environment(environ)
    if text is not None:
        if env_world > 1:
            raise ValueError(
                f"--shard {text}: give --shard or run under torchrun (WORLD_SIZE={env_world}), not both"
            )
        index, sep, count = text.partition("/")
        if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
            raise ValueError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. --shard 0/2")
        return int(index), int(count)
    return env_rank, env_world


def item_source(item: Any) -> str:
    """The file a dataset item stands for: its ``image`` path (the first, for several files per case)."""
    image = item.get("image") if isinstance(item, Mapping) else None
    if isinstance(image, (list, tuple)):
        image = image[0] if image else None
    if not isinstance(image, (str, os.PathLike)):
        raise ValueError(f"dataset item {item!r} has no 'image' file path: cannot name its output")
    return str(image)


def run_batch_inference(
    bundle: str | Path,
    files: Sequence[str],
    output_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> BatchReport:
    """Segment this process's share of ``files`` with the bundle's inference workflow; see the module doc.

    The cases are the items of the bundle's ``dataset`` built from ``datalist=files`` (one per file for
    most bundles; one per patient folder for a multi-modal bundle), and this process takes
    ``items[rank::world_size]``.

    Args:
        bundle: the bundle folder.
        files: every input file of the batch (all processes).
        output_dir: folder for the outputs and the JSON report.
        overrides: config overrides (``ckpt_path``, ``--set`` values ...).
        resume: skip cases whose output exists instead of overwriting it.
        shard: ``(rank, world_size)``.
    """
    rank, world_size = shard
    if not 0 <= rank < world_size:
        raise ValueError(f"shard {rank}/{world_size}: expected 0 <= rank < world size")
    output = Path(output_dir).resolve()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocker = next((path for path in (output, *output.parents) if path.is_file()), None)
        reason = f"{blocker} is a file" if blocker is not None else error.strerror
        raise ValueError(f"{output}: cannot create the output folder there, {reason}") from None
    if not os.access(output, os.W_OK):
        raise ValueError(f"{output}: output folder is not writable")
    overrides = {**(overrides or {}), "output_dir": str(output)}
    from unet_monai.distributed import rank_from_environment

    local_rank = rank_from_environment()[2] if world_size > 1 else None
    if local_rank is not None and torch.cuda.is_available() and "device" not in overrides:
        overrides["device"] = f"$torch.device('cuda:{local_rank % torch.cuda.device_count()}')"

    parser = load_workflow(bundle, "inference", **overrides, datalist=list(files)).parser
    items = list(parser.get_parsed_content("dataset#data"))
    sources = [item_source(item) for item in items]
    outputs = output_paths(find_saver(parser.get_parsed_content("postprocessing")), sources)
    share = list(range(rank, len(items), world_size))
    cases = [CaseResult(sources[i], str(outputs[sources[i]])) for i in share]
    todo: list[tuple[CaseResult, Any]] = []
    for case, index in zip(cases, share, strict=True):
        for stale in stale_partials(Path(case.output)):  # left by a killed run; this shard owns the case
            stale.unlink(missing_ok=True)
        if resume and Path(case.output).is_file():
            damage = output_problem(Path(case.output))
            if damage is None:
                case.status = "skipped"
                continue
            case.note = f"the existing {case.output} did not load ({damage}): segmented again"
            tqdm.write(f"resume: {case.note}", file=sys.stderr)
        todo.append((case, items[index]))

    if todo:
        recorder = CaseRecorder([case for case, _ in todo])
        workflow = load_workflow(
            bundle,
            "inference",
            **overrides,
            datalist=[case.file for case in cases],
            **{
                "dataset#data": [item for _, item in todo],
                "dataloader#dataset": "$unet_monai.batch_inference.GuardedDataset(@dataset)",
                "dataloader#batch_size": 1,
                "evaluator#iteration_update": recorder.iteration,
            },
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        disk_full = recorder.disk_full
        for case in recorder.cases:
            if case.status == "written" and not Path(case.output).is_file():
                recorder.fail(case, f"the bundle's SaveImaged wrote no {case.output}")
            elif case.status == "pending" and disk_full is not None:  # stopped on purpose: one line
                case.status = "failed"
                case.error = f"not processed: the disk is full ({disk_full.final} could not be written)"
            elif case.status == "pending":  # the evaluator stopped before reaching it
                recorder.fail(case, "not processed (the run stopped early)")
    else:
        disk_full = None

    report = BatchReport(cases, rank, world_size, str(output / report_name(rank, world_size)))
    for stale in stale_partials(Path(report.report_path)):
        stale.unlink(missing_ok=True)
    if disk_full is None:
        write_json(Path(report.report_path), report.to_json())
        return report
    try:
        write_json(Path(report.report_path), report.to_json())
    except OutputError:
        pass  # the disk is still full: the mask that did not fit is the error to report
    counts = report.count()
    raise OutputError(
        disk_full.final,
        disk_full.reason,
        disk_full.errno,
        advice=f"{counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed: "
        "free space and run again with --resume",
    )
