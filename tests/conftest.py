"""Shared fixtures: paths to the real data in ../shared/data and a small trained bundle checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "msd-hippocampus"
SPINALCORD = SHARED_DATA / "spinalcord"
HIPPOCAMPUS_BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"

# Small, fast settings for test trainings of the hippocampus bundle.
FAST_TRAIN = {
    "train#trainer#max_epochs": 1,
    "val_interval": 1,
    "num_samples": 4,
    "batch_size": 2,
    "network_def#features": 8,
}


def require(path: Path) -> Path:
    """Skip the test, naming the path, when real data is absent."""
    if not path.exists():
        pytest.skip(f"real data not found: {path} (expected ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unet_monai.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_cases=6, seed=3)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """A checkpoint of the hippocampus bundle's network (8 base features), trained one epoch."""
    from unet_monai.bundle import run_workflow

    models = tmp_path_factory.mktemp("models")
    run_workflow(
        HIPPOCAMPUS_BUNDLE,
        "train",
        dataset_dir=str(synthetic_dataset),
        ckpt_dir=str(models),
        output_dir=str(models / "runs"),
        **FAST_TRAIN,
    )
    checkpoint = models / "model.pt"
    assert checkpoint.is_file()
    return checkpoint
