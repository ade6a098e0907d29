"""PlainTensorBatches: training batches without MONAI metadata, validation batches with it."""

from __future__ import annotations

import numpy as np
import pytest
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset, MetaTensor, get_track_meta
from monai.transforms import Compose, EnsureChannelFirstd, Lambdad, RandSpatialCropd

from unet_monai.handlers import PlainTensorBatches


def _loader(num_items: int = 5, batch_size: int = 2) -> DataLoader:
    """Items holding a MetaTensor image, randomly cropped by a real MONAI transform when drawn."""
    items = [
        {"image": MetaTensor(np.full((8, 8), i, dtype=np.float32), affine=np.eye(4))}
        for i in range(num_items)
    ]
    transform = Compose(
        [
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            RandSpatialCropd(keys="image", roi_size=(4, 4), random_size=False),
        ]
    )
    return DataLoader(Dataset(items, transform), batch_size=batch_size, num_workers=0)


def test_batches_are_plain_tensors_and_tracking_comes_back_before_epoch_end() -> None:
    batch_types: list[type] = []
    tracking_at_epoch_end: list[bool] = []
    validation_types: list[type] = []
    validator = Engine(lambda engine, batch: validation_types.append(type(batch["image"])))
    trainer = Engine(lambda engine, batch: batch_types.append(type(batch["image"])))
    # Registered before the handler on purpose: it must still see tracking back on.
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: tracking_at_epoch_end.append(get_track_meta())
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run(_loader()))
    PlainTensorBatches().attach(trainer)

    assert get_track_meta()
    trainer.run(_loader(), max_epochs=3)

    assert len(batch_types) == 9  # 3 epochs of 3 batches (5 items, batch 2)
    assert all(kind is not MetaTensor for kind in batch_types), batch_types
    assert tracking_at_epoch_end == [True, True, True]
    assert validation_types and all(kind is MetaTensor for kind in validation_types)
    assert get_track_meta()


def test_tracking_is_restored_when_loading_fails() -> None:
    def unreadable(image: object) -> object:
        raise ValueError("unreadable sample")

    loader = DataLoader(Dataset([{"image": np.zeros((4, 4))}], Lambdad(keys="image", func=unreadable)))
    trainer = Engine(lambda engine, batch: None)
    PlainTensorBatches().attach(trainer)
    with pytest.raises(RuntimeError, match="applying transform"):
        trainer.run(loader, max_epochs=1)
    assert get_track_meta()
