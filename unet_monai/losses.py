"""Segmentation losses selectable by name from a bundle config.

MONAI has every loss here but two: a multi-class focal Tversky loss (MONAI's
``AsymmetricUnifiedFocalLoss`` is binary and its focal Tversky part is not exported).
:class:`FocalTverskyLoss` builds it on MONAI's ``TverskyLoss``; and the U-Net paper's pixel-weighted
cross-entropy, :class:`WeightedCrossEntropyLoss`, which reads the border weight map
(``unet_monai.transforms.weight_map``) as the label's second channel.

    "loss": {"_target_": "unet_monai.losses.create_loss", "name": "focal_tversky",
             "to_onehot_y": true, "softmax": true}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, TverskyLoss

__all__ = ["FocalTverskyLoss", "LOSS_NAMES", "WeightedCrossEntropyLoss", "create_loss"]


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


class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy weighted per pixel, optionally plus (unweighted) soft Dice.

    The target is ``(B, 1, ...)`` class indices, or ``(B, 2, ...)`` with the per-pixel weight as the
    second channel (the border weight map). Without a weight channel every pixel weighs 1 (plain
    cross-entropy), so one loss serves the runs with and without the weight map. The weighted sum is
    divided by the sum of the weights: the weights shape the loss without changing its scale, so the
    two runs share a learning rate.
    """

    def __init__(self, dice_weight: float = 0.0) -> None:
        """
        Args:
            dice_weight: weight of MONAI's soft Dice loss (softmax, one-hot target) added to the
                cross-entropy; 0 gives the paper's loss.
        """
        super().__init__()
        self.dice_weight = dice_weight
        self.dice = DiceLoss(to_onehot_y=True, softmax=True) if dice_weight > 0 else None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] not in (1, 2):
            raise ValueError(
                f"target must have 1 (class) or 2 (class, weight) channels, got {target.shape[1]}"
            )
        classes = target[:, :1]
        cross_entropy = F.cross_entropy(input.float(), classes[:, 0].long(), reduction="none")
        if target.shape[1] == 2:
            weight = target[:, 1].float()
            loss = (cross_entropy * weight).sum() / weight.sum().clamp_min(1e-8)
        else:
            loss = cross_entropy.mean()
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(input, classes)
        return loss


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
