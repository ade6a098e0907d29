"""Training runs that survive a kill and scale out: resume checkpoints and the torchrun set-up.

``ResumeCheckpoint`` (a trainer handler) writes, at the end of every epoch, everything a run needs to
continue: network, optimiser, LR scheduler, the trainer's state (epoch, iteration), AMP's GradScaler,
the validator's best metric and the ranking of the best-metric ``CheckpointSaver`` (so that
``model.pt`` is not replaced by a worse model after resuming). It writes through ``AtomicDiskSaver``
(ignite's ``DiskSaver``, rank 0 only, writing with ``unet_monai.io.atomic_output``: a hidden
``.partial-`` file in the same folder, synced and checked, then renamed), so a kill or a full disk
never leaves a truncated checkpoint: a full disk stops training with one ``OutputError``,
``<checkpoint>: could not write (No space left on device)``.
With ``resume`` on, MONAI's ``CheckpointLoader`` (``torch.load(weights_only=True)``) restores it all
when the trainer starts, so the run continues at the next epoch.

``AtomicCheckpointSaver`` is MONAI's ``CheckpointSaver`` writing the same way, so that ``model.pt`` is
never missing or half-written either.

``distributed_device`` and ``rank_handlers`` are what a bundle's ``multi_gpu_train.json`` needs under
``torchrun``: the process group (NCCL on CUDA, Gloo on CPU), this rank's device from ``LOCAL_RANK``, and
the logging / saving handlers kept on rank 0 only.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver, ProgressBar
from monai.handlers import (
    CheckpointLoader,
    CheckpointSaver,
    MetricsSaver,
    StatsHandler,
    TensorBoardImageHandler,
    TensorBoardStatsHandler,
)

from unet_monai.io import atomic_output

# Handlers that only log or write files: multi-GPU runs keep them on rank 0 only.
RANK_ZERO_HANDLERS = (
    StatsHandler,
    TensorBoardStatsHandler,
    TensorBoardImageHandler,
    CheckpointSaver,
    MetricsSaver,
    ProgressBar,
)


class BestMetric:
    """An engine's best key metric and its epoch (MONAI keeps them in ``engine.state``) as a state dict."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict[str, float | int]:
        return {
            "best_metric": float(self.engine.state.best_metric),
            "best_metric_epoch": int(self.engine.state.best_metric_epoch),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.engine.state.best_metric = state["best_metric"]
        self.engine.state.best_metric_epoch = state["best_metric_epoch"]


class BestCheckpointRanking:
    """The scores a key-metric ``CheckpointSaver`` has kept, as a state dict.

    MONAI's ``CheckpointSaver.load_state_dict`` restores them (its documented way to resume the key metric
    tracking) but it has no ``state_dict``; this reads the same ignite ``Checkpoint`` state it restores.
    """

    def __init__(self, saver: CheckpointSaver) -> None:
        if saver._key_metric_checkpoint is None:
            raise ValueError("best_saver: a CheckpointSaver with save_key_metric=true is needed")
        self.saver = saver

    def state_dict(self) -> dict[str, list]:
        return self.saver._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.saver.load_state_dict(state)


def _unwrapped(obj: Any) -> Any:
    """The network inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (checkpoint keys without
    ``module.``), as ignite's ``Checkpoint`` saves it."""
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


def _check_checkpoint(path: Path) -> None:
    """Refuse a written checkpoint that is not a whole zip archive (``torch.save``'s format)."""
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"the written checkpoint does not re-open ({error})") from None


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` (rank 0 only) writing each checkpoint with ``unet_monai.io.atomic_output``.

    The checkpoint is serialised in memory first (``torch.save`` turns a disk error into a vague
    ``RuntimeError``; a plain file write gives the ``OSError`` that becomes ``OutputError`` naming the
    checkpoint), then written to a hidden ``.partial-`` file, synced, checked to re-open as a zip archive,
    given mode 0644 and renamed over the checkpoint. ``filename`` fixes the name of every save (as MONAI's
    ``CheckpointSaver`` does for ``model.pt``): the rename replaces it, so ``remove`` deletes nothing.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        buffer = io.BytesIO()
        func(checkpoint, buffer, **self.kwargs)
        with atomic_output(path, verify=_check_checkpoint) as temporary:
            temporary.write_bytes(buffer.getbuffer())

    def remove(self, filename: str) -> None:
        if self.filename is None:  # a fixed name is replaced by the next save, never deleted first
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with every file written atomically.

    MONAI builds ignite's ``DiskSaver`` with ``atomic=False`` (for group-read permission, which ignite now
    sets itself), and replaces a fixed-name file (``model.pt``) by deleting it and then writing the new one:
    a kill in between leaves no file, or half of one. Here each checkpoint's save handler is an
    ``AtomicDiskSaver`` (same folder, same fixed name): a fixed-name file is replaced in one rename, never
    deleted first, and a full disk leaves the previous file as it was. Same arguments as ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed_name = checkpoint.save_handler.filename
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename=fixed_name)


class ResumeCheckpoint:
    """Write a resume checkpoint every epoch (atomically, rank 0) and, with ``resume``, restore it at start.

    Attach it to the trainer after the ``ValidationHandler`` and ``LrScheduleHandler`` so that the epoch's
    validation and LR step are in the checkpoint. A missing checkpoint with ``resume`` on starts from epoch 1
    (so ``--resume`` also works for ensemble members that never started) and says so.

    Args:
        path: the checkpoint file (its folder is created).
        save_dict: the objects to save besides the trainer, e.g. ``{"model": net, "optimizer": opt,
            "lr_scheduler": sched}``; the trainer, its GradScaler (AMP) and best metric are added.
        resume: restore the checkpoint when the trainer starts.
        validator: the evaluator whose best metric (``state.best_metric``) is kept.
        best_saver: the evaluator's key-metric ``CheckpointSaver`` whose ranking is kept.
        map_location: where to load the tensors (the run's device).
    """

    def __init__(
        self,
        path: str | Path,
        save_dict: Mapping[str, Any],
        resume: bool = False,
        validator: Engine | None = None,
        best_saver: CheckpointSaver | None = None,
        map_location: str | torch.device | None = None,
    ) -> None:
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be true or false, got {resume!r}")
        self.path = Path(path)
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.validator = validator
        self.best_saver = best_saver
        self.map_location = map_location
        self.saver = AtomicDiskSaver(self.path.parent)

    def objects(self, trainer: Engine) -> dict[str, Any]:
        """Everything the checkpoint holds, by name."""
        objects = dict(self.save_dict)
        objects["trainer"] = trainer
        if hasattr(trainer.state, "best_metric"):  # MONAI engines; a plain ignite Engine has none
            objects["trainer_best_metric"] = BestMetric(trainer)
        if getattr(trainer, "scaler", None) is not None:
            objects["scaler"] = trainer.scaler
        if self.validator is not None:
            objects["best_metric"] = BestMetric(self.validator)
        if self.best_saver is not None:
            objects["best_checkpoint"] = BestCheckpointRanking(self.best_saver)
        return objects

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if not self.resume:
            return
        if _found_on_every_rank(self.path):
            engine.add_event_handler(Events.STARTED, self.load)
        else:
            print(f"resume: no checkpoint at {self.path}; training starts at epoch 1")

    def load(self, engine: Engine) -> None:
        """Restore the checkpoint with MONAI's ``CheckpointLoader`` when the run starts (MONAI's trainer
        makes its GradScaler in ``run()``, so the objects are gathered then)."""
        loader = CheckpointLoader(
            str(self.path), self.objects(engine), name=engine.logger.name, map_location=self.map_location
        )
        loader(engine)

    def save(self, engine: Engine) -> None:
        checkpoint = {name: _unwrapped(obj).state_dict() for name, obj in self.objects(engine).items()}
        self.saver(checkpoint, self.path.name)


def _found_on_every_rank(path: Path) -> bool:
    """Whether ``path`` is a file, agreed by every rank of a distributed run: ranks that resumed and ranks
    that started afresh would train different models, so a file only some ranks see stops the run."""
    found = path.is_file()
    if not dist.is_initialized():
        return found
    everywhere: list[bool | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everywhere, found)
    if any(everywhere) and not all(everywhere):
        ranks = [rank for rank, seen in enumerate(everywhere) if seen]
        raise RuntimeError(
            f"{path}: the resume checkpoint is visible to ranks {ranks} only; "
            "every rank needs the same ckpt_dir"
        )
    return found


def _environment_int(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    """An integer torchrun variable (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` ...), None when unset."""
    text = environ.get(name)
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{name}={text!r}: not an integer (torchrun sets it; unset it or fix it)") from None
    if value < minimum:
        raise ValueError(f"{name}={value}: must be at least {minimum}")
    return value


def rank_from_environment(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int | None]:
    """``(rank, world_size, local_rank)`` from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
    (defaults 0, 1, None), checked: integers, ``0 <= RANK < WORLD_SIZE``, ``0 <= LOCAL_RANK`` (and below
    ``LOCAL_WORLD_SIZE`` when set). A rank outside the world would overlap another rank's share: a
    ``ValueError`` naming the variable."""
    world_size = _environment_int(environ, "WORLD_SIZE", 1)
    world_size = 1 if world_size is None else world_size
    rank = _environment_int(environ, "RANK", 0)
    rank = 0 if rank is None else rank
    if rank >= world_size:
        raise ValueError(
            f"RANK={rank}: outside 0 .. {world_size - 1} (WORLD_SIZE={world_size}); it would repeat another "
            "rank's share"
        )
    local_rank = _environment_int(environ, "LOCAL_RANK", 0)
    local_world = _environment_int(environ, "LOCAL_WORLD_SIZE", 1)
    if local_rank is not None and local_world is not None and local_rank >= local_world:
        raise ValueError(
            f"LOCAL_RANK={local_rank}: outside 0 .. {local_world - 1} (LOCAL_WORLD_SIZE={local_world})"
        )
    return rank, world_size, local_rank


def distributed_device() -> torch.device:
    """Join the ``torchrun`` process group (NCCL with CUDA, else Gloo) once; this rank's device.

    The device is ``cuda:LOCAL_RANK`` (made current) with CUDA, else the CPU. Outside ``torchrun`` (no
    ``LOCAL_RANK``) it stops with one line saying how to launch; ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
    that are not integers, or out of range, stop with one line naming the variable
    (``rank_from_environment``).
    """
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json runs under torchrun (LOCAL_RANK is not set): torchrun --nproc_per_node=N "
            "-m monai.bundle run --config_file \"['configs/train.json','configs/multi_gpu_train.json']\""
        )
    local_rank = rank_from_environment()[2] or 0  # set: checked above
    cuda = torch.cuda.is_available()
    if cuda and local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local_rank}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if not cuda:
        return torch.device("cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def rank_handlers(handlers: Sequence[Any] | None) -> list[Any]:
    """The handlers this rank attaches: all on rank 0; on other ranks, all but those that only log or
    write files (statistics, TensorBoard, checkpoints, metric reports, progress bars)."""
    handlers = list(handlers or [])
    if not dist.is_initialized() or dist.get_rank() == 0:
        return handlers
    return [h for h in handlers if not isinstance(h, RANK_ZERO_HANDLERS)]


def quiet_other_ranks(*engines: Engine) -> None:
    """Leave the engines' INFO logs to rank 0 (other ranks still log warnings), as MONAI's model zoo does."""
    if dist.is_initialized() and dist.get_rank() > 0:
        for engine in engines:
            engine.logger.setLevel(logging.WARNING)
