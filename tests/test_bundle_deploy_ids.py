"""Every bundle keeps the config ids and metadata keys MONAI Deploy's bundle inference operator reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BUNDLES = sorted(path.parent.parent for path in (REPO_ROOT / "bundles").glob("*/configs/metadata.json"))


@pytest.mark.parametrize("bundle", BUNDLES, ids=[bundle.name for bundle in BUNDLES])
def test_inference_ids_and_io_names(bundle: Path) -> None:
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    missing = [
        key for key in ("network_def", "preprocessing", "inferer", "postprocessing") if key not in inference
    ]
    assert not missing, f"{bundle.name}: inference.json lacks {missing}"
    data_format = metadata["network_data_format"]
    assert "image" in data_format["inputs"] and "pred" in data_format["outputs"], bundle.name
    assert (bundle / "configs" / "logging.conf").is_file() and (bundle / "LICENSE").is_file(), bundle.name
