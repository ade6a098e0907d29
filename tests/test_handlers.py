"""PlainTensorBatches: training batches without MONAI metadata, validation batches with it.
SkipNonFiniteSteps: a step with NaN gradients is skipped."""

from __future__ import annotations

import numpy as np
import pytest
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset, MetaTensor, get_track_meta
from monai.transforms import Compose, EnsureChannelFirstd, Lambdad, RandSpatialCropd

from unet_monai.handlers import PlainTensorBatches, untracked_worker_init


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


def test_untracked_worker_init_turns_metadata_off_in_workers_and_seeds_them_apart() -> None:
    """In DataLoader workers (the training loader on CUDA) samples come out as plain tensors, each
    worker's random transforms are seeded apart (MONAI's seeding), and the main process keeps tracking."""
    chain = Compose(
        [
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            RandSpatialCropd(keys="image", roi_size=(4, 4), random_size=False),
            Lambdad(keys="image", func=lambda image: (image, get_track_meta())),
        ]
    )
    data = [{"image": MetaTensor(np.arange(4096.0).reshape(64, 64))} for _ in range(8)]
    loader = DataLoader(
        Dataset(data, chain), batch_size=1, num_workers=2, worker_init_fn=untracked_worker_init
    )
    batches = list(loader)
    assert all(not bool(batch["image"][1]) for batch in batches)  # tracking off inside the workers
    crops = [batch["image"][0].flatten().tolist() for batch in batches]
    # items 2k and 2k + 1 go to workers 0 and 1: seeded alike, every such pair would be the same crop
    assert any(crops[2 * k] != crops[2 * k + 1] for k in range(4))
    assert get_track_meta()


def test_a_step_with_nan_gradients_is_skipped_and_the_weights_stay_finite() -> None:
    """MONAI's SupervisedTrainer with a loss that is NaN on its second iteration: that step is skipped
    (counted, the weights as before it), the others update the weights."""
    import torch
    from monai.engines import SupervisedTrainer
    from monai.engines.utils import IterationEvents

    from unet_monai.handlers import SkipNonFiniteSteps

    torch.manual_seed(0)
    network = torch.nn.Linear(4, 1)
    items = [{"image": torch.randn(4), "label": torch.randn(1)} for _ in range(3)]
    calls = {"n": 0}

    def loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        value = ((prediction - target) ** 2).mean()
        return value * float("nan") if calls["n"] == 2 else value

    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(items), batch_size=1),
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=0.1),
        loss_function=loss,
        train_handlers=[SkipNonFiniteSteps()],
    )
    weights = [network.weight.detach().clone()]  # at the start, then after each iteration's step
    trainer.add_event_handler(
        IterationEvents.MODEL_COMPLETED, lambda e: weights.append(network.weight.detach().clone())
    )
    trainer.run()
    assert trainer.state.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in network.parameters())
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[2], weights[3])  # steps 1, 3
    assert torch.equal(weights[1], weights[2])  # step 2 skipped
