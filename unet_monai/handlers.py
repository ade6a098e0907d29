"""Ignite handlers that MONAI's engines lack.

``PlainTensorBatches``: MONAI wraps every intermediate tensor of a transform chain in a
``MetaTensor`` and records each transform, so that ``Invertd`` can undo them. Training samples are
never inverted, yet that bookkeeping costs more than the transforms themselves on small 2D slices
(measured on the hippocampus bundle: the random transforms of one epoch take 8.2 s with it and
2.5 s without). This handler switches MONAI's metadata tracking off while the engine draws a batch, and
back on as soon as the batch is in hand, so validation and inference keep their metadata.

``untracked_worker_init``: the same for batches drawn in DataLoader worker processes, which keep
their own tracking setting (with MONAI's per-worker seeding of the random transforms).

``ValidateAtEnd``: validates the last epoch of a run that ValidationHandler's interval skipped, so a short run
still validates and saves its checkpoint.

``StopAfter``: ends training after the epoch that passes a time limit (planned bundles' budget).

``AxisEnsembleCheckpointLoader``: loads each member of an ``AxisEnsemble`` (one 2D network per
slice direction) from its own checkpoint when the engine starts, as MONAI's ``CheckpointLoader``
does for one network.

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
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.data import get_track_meta, set_track_meta
from monai.data.utils import worker_init_fn
from monai.handlers import CheckpointLoader, CheckpointSaver

from unet_monai.distributed import found_on_every_rank
from unet_monai.io import atomic_output
from unet_monai.networks.ensemble import AxisEnsemble, load_member_checkpoints


class SkipNonFiniteSteps:
    """Skip a training step whose gradients are not finite (NaN / Inf), as AMP's ``GradScaler`` does.

    CPU bfloat16 autocast (``BFloat16Inferer``) can give a NaN weight gradient where float32 gives a
    finite one: with torch 2.13 on this CPU, the 3D bundle's tiny test network (4 features, 16^3 patches)
    got one in 3 and 12 of 200 random batches in two runs (``studies/bf16_nan_gradients.py``), always in a
    3D convolution on 4x4x4 feature maps, and a single
    such step leaves every weight NaN for good. After the backward pass, if any gradient is not finite,
    this handler drops that iteration's gradients (the optimiser skips parameters without one), logs a
    warning naming the iteration, and counts it in ``engine.state.skipped_steps``. With ``amp`` on (CUDA)
    the engine's own ``GradScaler`` already skips such steps, and this handler does nothing.
    """

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.state.skipped_steps = 0
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.check)

    def check(self, engine: Engine) -> None:
        if getattr(engine, "amp", False):
            return
        gradients = [
            parameter
            for group in engine.optimizer.param_groups
            for parameter in group["params"]
            if parameter.grad is not None
        ]
        if not gradients or bool(torch.stack([torch.isfinite(p.grad).all() for p in gradients]).all()):
            return
        for parameter in gradients:
            parameter.grad = None
        engine.state.skipped_steps = getattr(engine.state, "skipped_steps", 0) + 1
        logging.getLogger(__name__).warning(
            "iteration %d: gradients not finite (NaN / Inf); step skipped (%d so far)",
            engine.state.iteration,
            engine.state.skipped_steps,
        )


class PlainTensorBatches:
    """Draw an engine's batches with MONAI metadata tracking off (plain tensors, no transform records).

    Only for data loaded in the engine's own process (``num_workers=0`` or a ``ThreadDataLoader``):
    worker processes keep their own setting. Attach it to a trainer whose samples are not inverted.
    """

    def __init__(self) -> None:
        self._saved: bool | None = None

    def attach(self, engine: Engine) -> None:
        # When a loader is exhausted, ignite restarts it and draws again without a second
        # GET_BATCH_STARTED, so tracking stays off until GET_BATCH_COMPLETED. Every iteration passes
        # GET_BATCH_COMPLETED before its step, so epoch-end handlers (validation) always see tracking
        # back on, whatever the handler order. Failures and stops restore it too.
        engine.add_event_handler(Events.GET_BATCH_STARTED, self.tracking_off)
        for event in (Events.GET_BATCH_COMPLETED, Events.TERMINATE, Events.COMPLETED):
            engine.add_event_handler(event, self.tracking_restored)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)

    def tracking_off(self, engine: Engine | None = None) -> None:
        if self._saved is None:
            self._saved = get_track_meta()
        set_track_meta(False)

    def tracking_restored(self, engine: Engine | None = None, *args: object) -> None:
        if self._saved is not None:
            set_track_meta(self._saved)
            self._saved = None

    def exception_raised(self, engine: Engine, error: Exception) -> None:
        """Restore tracking, then re-raise: ignite swallows an error that an EXCEPTION_RAISED handler
        does not raise again (MONAI's own handlers re-raise the same way)."""
        self.tracking_restored()
        raise error


def untracked_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for training DataLoaders: MONAI's per-worker seeding of the random transforms,
    then metadata tracking off in the worker process (what ``PlainTensorBatches`` does in the main one)."""
    worker_init_fn(worker_id)
    set_track_meta(False)


class AxisEnsembleCheckpointLoader:
    """Load every member of an ``AxisEnsemble`` from its own checkpoint when the engine starts.

    MONAI's ``CheckpointLoader`` loads one file; an axis ensemble keeps one checkpoint per member
    (``model.pt``, ``model_member1.pt``, ...: ``unet_monai.networks.member_checkpoints``). A
    missing member stops the run with one line naming the file.
    """

    def __init__(self, ensemble: AxisEnsemble, checkpoints: Sequence[str | Path]) -> None:
        self.ensemble = ensemble
        self.checkpoints = list(checkpoints)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_member_checkpoints(self.ensemble, self.checkpoints)


class ValidateAtEnd:
    """Validate once more when training completes, unless its last epoch was validated already.

    MONAI's ``ValidationHandler`` validates every ``interval`` epochs, so a run shorter than
    ``val_interval`` (or not a multiple of it) would end without validating its last epochs, and the
    best-metric ``CheckpointSaver`` attached to the validator would never write ``model.pt``. Attach it
    to the trainer beside the ``ValidationHandler``, with the same validator and interval.
    """

    def __init__(self, validator: Engine, interval: int) -> None:
        if interval < 1:
            raise ValueError(f"val_interval: must be a positive integer, got {interval}")
        self.validator = validator
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval != 0:
            self.validator.run(epoch)


class StopAfter:
    """End training after the first epoch that finishes past ``minutes`` (counted from the start of the
    run), so a time budget holds even where a run is slower than planned; ``None``: no limit. Whole
    epochs only: ``ValidateAtEnd`` then validates and saves the last one, as for a run that ends
    normally."""

    def __init__(self, minutes: float | None) -> None:
        if minutes is not None and not minutes > 0:
            raise ValueError(f"time_limit_minutes: must be positive (or null for no limit), got {minutes}")
        self.seconds = None if minutes is None else float(minutes) * 60.0
        self.started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def start(self, engine: Engine) -> None:
        self.started = time.monotonic()

    def __call__(self, engine: Engine) -> None:
        if self.seconds is not None and time.monotonic() - self.started > self.seconds:
            engine.logger.info(
                "time limit of %.1f minutes reached after epoch %d: training stops",
                self.seconds / 60,
                engine.state.epoch,
            )
            engine.terminate()


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
        if found_on_every_rank(self.path):
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
