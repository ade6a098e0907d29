"""Segmentation losses selectable by name from a bundle config.

MONAI has every loss here but one: a multi-class focal Tversky loss (MONAI's
``AsymmetricUnifiedFocalLoss`` is binary and its focal Tversky part is not exported).
:class:`FocalTverskyLoss` builds it on MONAI's ``TverskyLoss``.

    "loss": {"_target_": "unet_monai.losses.create_loss", "name": "focal_tversky",
             "to_onehot_y": true, "softmax": true}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from monai.losses import DiceCELoss, DiceLoss, TverskyLoss

__all__ = ["FocalTverskyLoss", "LOSS_NAMES", "create_loss"]


class FocalTverskyLoss(nn.Module):
    """Multi-class focal Tversky loss: mean over classes (and batch) of ``(1 - TI_c) ** (1 / gamma)``.

    Abraham and Khan, "A novel focal Tversky loss function with improved attention U-Net for lesion
    segmentation", ISBI 2019, https://arxiv.org/abs/1810.07842. The Tversky index of class ``c`` is
    ``TP / (TP + alpha FP + beta FN)``; the paper weighs false negatives more (``beta`` 0.7,
    ``alpha`` 0.3) and uses ``gamma`` 4/3, which makes the loss focus on classes that are already
    fairly well segmented less than on hard ones. ``gamma`` 1 gives MONAI's ``TverskyLoss``.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4 / 3, **tversky_kwargs):
        """
        Args:
            alpha: weight of the false positives (MONAI's convention).
            beta: weight of the false negatives.
            gamma: focal parameter; the per-class loss is raised to the power ``1 / gamma``.
            tversky_kwargs: the other arguments of MONAI's ``TverskyLoss`` (``to_onehot_y``,
                ``softmax``, ``sigmoid``, ``include_background``, ``batch``, ...).
        """
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}.")
        if "reduction" in tversky_kwargs:
            raise ValueError("FocalTverskyLoss always averages over classes and batch; drop 'reduction'.")
        self.exponent = 1.0 / gamma
        self.tversky = TverskyLoss(alpha=alpha, beta=beta, reduction="none", **tversky_kwargs)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logits ``input`` (B, C, ...) against ``target`` (B, 1, ...) labels or (B, C, ...) one-hot."""
        one_minus_tversky = self.tversky(input, target)  # (B, C), or (C,) with batch=True
        # The power's gradient is infinite at 0 (a perfect class); keep it finite.
        return one_minus_tversky.clamp(min=1e-6).pow(self.exponent).mean()


def _cross_entropy(**kwargs) -> nn.Module:
    """Cross-entropy (softmax) or binary cross-entropy (sigmoid) through MONAI's DiceCELoss, Dice off."""
    return DiceCELoss(lambda_dice=0.0, lambda_ce=1.0, **kwargs)


LOSS_NAMES: dict[str, Callable[..., nn.Module]] = {
    "dice": DiceLoss,
    "squared_dice": lambda **kwargs: DiceLoss(squared_pred=True, **kwargs),
    "ce": _cross_entropy,
    "bce": lambda **kwargs: _cross_entropy(**{**kwargs, "sigmoid": True, "softmax": False}),
    "dice_ce": DiceCELoss,
    "focal_tversky": FocalTverskyLoss,
}


def create_loss(name: str, **kwargs) -> nn.Module:
    """The loss called ``name`` (see ``LOSS_NAMES``), built with ``kwargs``.

    ``ce`` is cross-entropy with ``softmax=True`` and binary cross-entropy with ``sigmoid=True``;
    ``bce`` is always binary cross-entropy (sigmoid per channel).
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSS_NAMES))}.")
    return LOSS_NAMES[name](**kwargs)
