"""Where a benchmark figure was measured: the facts every bench script writes into its JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from unet_monai.inference import cpu_bf16_supported


def machine_info() -> dict:
    """Platform, CPU count, torch threads and version, GPU (if any), native bfloat16, load at start."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_bf16": cpu_bf16_supported(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def rounded(value: Any) -> Any:
    """Floats to 4 significant digits, recursively (dicts and lists)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def emit_json(result: dict, output: str | Path | None) -> None:
    """Print ``result`` as JSON on stdout and, with ``output``, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n")
