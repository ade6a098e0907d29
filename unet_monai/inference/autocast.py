"""Mixed precision on the CPU: run any inferer under ``torch.autocast`` in bfloat16.

MONAI's engines take an ``amp`` flag, but they autocast on CUDA only. On a CPU with native
bfloat16 instructions (AVX512-BF16 or AMX) a U-Net's convolutions run about twice as fast in
bfloat16 as in float32. ``BFloat16Inferer`` wraps the inferer the engine calls, so the network's
forward pass runs in bfloat16 while the loss, the backward pass's accumulation into float32
weights and the metrics stay in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN with AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class BFloat16Inferer(Inferer):
    """Run ``inferer`` under CPU autocast to bfloat16 and return float32 outputs.

    Inputs on another device (CUDA) pass through unchanged: there the engines' own ``amp`` applies.

    Args:
        inferer: the inferer to wrap (``SimpleInferer`` in training, a volume inferer in validation).
        enabled: ``False`` turns the wrapper into a plain pass-through (e.g. on CPUs without
            native bfloat16, where it would be slower; see ``cpu_bf16_supported``).
    """

    def __init__(self, inferer: Inferer, enabled: bool = True) -> None:
        super().__init__()
        self.inferer = inferer
        self.enabled = enabled

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.enabled or inputs.device.type != "cpu":
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = self.inferer(inputs, network, *args, **kwargs)
        return outputs.float()
