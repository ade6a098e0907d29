"""Where a benchmark figure was measured: the facts every bench script writes into its JSON."""

from __future__ import annotations

import os
import platform

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
