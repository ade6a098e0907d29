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

``AxisEnsembleCheckpointLoader``: loads each member of an ``AxisEnsemble`` (one 2D network per
slice direction) from its own checkpoint when the engine starts, as MONAI's ``CheckpointLoader``
does for one network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Engine, Events
from monai.data import get_track_meta, set_track_meta
from monai.data.utils import worker_init_fn

from unet_monai.networks.axis_ensemble import AxisEnsemble, load_member_checkpoints


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
