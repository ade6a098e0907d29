"""The named variants of the modular U-Net, and the base width that puts a variant on a parameter budget.

The five variants of "U-Net based architectures for medical image segmentation" (seed project 4 of
``../shared/SEEDS.md``: U-Net, Attention U-Net, NAS U-Net, NAS-reduction U-Net, Efficient U-Net, all
compared at about 8.5 M parameters), plus the batch-norm and residual U-Nets. Each variant changes only
the slots that define it; all use 2x2 transposed-conv up-sampling, as the paper does.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch

from unet_monai.networks.modular import ModularUNet

__all__ = ["VARIANTS", "Variant", "build_variant", "count_parameters", "features_for_budget"]

PAPER_BUDGET = 8_500_000


@dataclass(frozen=True)
class Variant:
    """The slots of a modular U-Net and its norm."""

    conv_block: str = "double_conv"
    skip_conn: str = "concat"
    down_op: str = "max_pool"
    up_op: str = "transpose"
    norm: str | None = None


VARIANTS: dict[str, Variant] = {
    "unet": Variant(),
    "unet_bn": Variant(norm="batch"),
    "residual_unet": Variant(conv_block="residual", norm="batch"),
    "attention_unet": Variant(skip_conn="attention"),
    "nas_unet": Variant(conv_block="nasnet_normal", norm="batch"),
    "nas_reduction_unet": Variant(conv_block="nasnet_normal", down_op="nasnet_reduction", norm="batch"),
    "efficient_unet": Variant(conv_block="mbconv", norm="batch"),
}


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known variants: {', '.join(sorted(VARIANTS))}.")
    return VARIANTS[name]


def build_variant(name: str, **kwargs) -> ModularUNet:
    """The modular U-Net of variant ``name``; ``kwargs`` go to ``ModularUNet`` (``norm`` may override).

    Raises:
        ValueError: if ``name`` is not one of :data:`VARIANTS`.
    """
    return ModularUNet(**{**asdict(_variant(name)), **kwargs})


def count_parameters(net: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def features_for_budget(
    name: str = "unet", budget: int = PAPER_BUDGET, max_features: int = 1024, **kwargs
) -> tuple[int, int]:
    """The base width (``features``) whose parameter count is nearest to ``budget``, and that count.

    The count grows with the width, about quadratically, so the nearest width lies within half a width
    step of the budget: within 3 % of 8.5 M parameters for the 2D variants of depth 4, 5 % in 3D. Networks
    are built on the ``meta`` device (no memory, no initialisation), about six of them per search.

    Args:
        name: a variant of :data:`VARIANTS`.
        budget: the number of parameters to aim at (the paper: about 8.5 M).
        max_features: the largest width tried.
        kwargs: other ``ModularUNet`` arguments (``spatial_dims``, ``in_channels``, ``out_channels``,
            ``depth``, ...), as the network will be built.

    Example::

        >>> features, num_params = features_for_budget("attention_unet", in_channels=2, out_channels=2)
    """
    _variant(name)

    @functools.cache
    def count(features: int) -> int:
        with torch.device("meta"):
            return count_parameters(build_variant(name, features=features, **kwargs))

    features = 32
    for _ in range(2):  # the count grows about as features**2: two rescalings land within a step or two
        features = max(1, min(max_features, round(features * math.sqrt(budget / count(features)))))
    # the count grows with the width, so its distance to the budget falls, then rises: walk to the minimum
    while features > 1 and abs(count(features - 1) - budget) <= abs(count(features) - budget):
        features -= 1
    while features < max_features and abs(count(features + 1) - budget) < abs(count(features) - budget):
        features += 1
    return features, count(features)
