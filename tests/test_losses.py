"""Losses by name: each one against its definition, and the multi-class focal Tversky loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import TverskyLoss

from tests.conftest import HIPPOCAMPUS_BUNDLE
from unet_monai.bundle import load_workflow
from unet_monai.losses import LOSS_NAMES, FocalTverskyLoss, create_loss


def _logits_and_labels(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=generator, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)
    return logits, labels


def test_focal_tversky_with_gamma_1_is_monai_tversky() -> None:
    logits, labels = _logits_and_labels()
    focal = FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=1.0, softmax=True, to_onehot_y=True)
    plain = TverskyLoss(alpha=0.3, beta=0.7, softmax=True, to_onehot_y=True)
    torch.testing.assert_close(focal(logits, labels), plain(logits, labels))


def test_focal_tversky_is_the_mean_of_powered_class_losses() -> None:
    logits, labels = _logits_and_labels(1)
    per_class = TverskyLoss(alpha=0.3, beta=0.7, softmax=True, to_onehot_y=True, reduction="none")(
        logits, labels
    )
    expected = (per_class ** (3 / 4)).mean()
    focal = FocalTverskyLoss(softmax=True, to_onehot_y=True)  # gamma 4/3: exponent 3/4
    torch.testing.assert_close(focal(logits, labels), expected)


def _two_class_probabilities(mask: torch.Tensor) -> torch.Tensor:
    """Background / foreground probabilities (B, 2, ...) of a hard 0 / 1 mask (B, 1, ...)."""
    return torch.cat([1 - mask, mask], dim=1)


def test_focal_tversky_weighs_missed_foreground_more_than_false_positives() -> None:
    """beta 0.7 > alpha 0.3: missing 8 foreground pixels costs more than 8 extra ones."""
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1  # 16 pixels
    missed, extra = target.clone(), target.clone()
    missed[..., 2:4, 2:6] = 0  # 8 false negatives
    extra[..., 6:8, 2:6] = 1  # 8 false positives
    loss = FocalTverskyLoss(include_background=False)  # inputs are already probabilities
    onehot_target = _two_class_probabilities(target)
    assert loss(_two_class_probabilities(missed), onehot_target) > loss(
        _two_class_probabilities(extra), onehot_target
    )
    assert loss(onehot_target, onehot_target) < 1e-3


def test_focal_tversky_gradient_is_finite_at_a_perfect_prediction() -> None:
    labels = torch.randint(0, 2, (1, 1, 8, 8))
    logits = (F.one_hot(labels[:, 0], 2).permute(0, 3, 1, 2).float() * 40.0).requires_grad_()
    FocalTverskyLoss(softmax=True, to_onehot_y=True)(logits, labels).backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_tversky_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gamma must be positive"):
        FocalTverskyLoss(gamma=0)
    with pytest.raises(ValueError, match="reduction"):
        FocalTverskyLoss(reduction="sum")


def test_ce_is_torch_cross_entropy_and_bce_is_torch_bce() -> None:
    logits, labels = _logits_and_labels(2)
    ce = create_loss("ce", softmax=True, to_onehot_y=True)
    torch.testing.assert_close(ce(logits, labels), F.cross_entropy(logits, labels[:, 0]))
    binary_logits, binary_labels = logits[:, :1], (labels > 0).float()
    bce = create_loss("ce", sigmoid=True)
    torch.testing.assert_close(
        bce(binary_logits, binary_labels), F.binary_cross_entropy_with_logits(binary_logits, binary_labels)
    )


def test_squared_dice_uses_squared_denominators() -> None:
    logits, labels = _logits_and_labels(3)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).float()
    dims = (2, 3)
    intersection = (probs * onehot).sum(dims)
    squared = 1 - (2 * intersection + 1e-5) / ((probs**2).sum(dims) + (onehot**2).sum(dims) + 1e-5)
    plain = 1 - (2 * intersection + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)
    kwargs = {"softmax": True, "to_onehot_y": True}
    torch.testing.assert_close(create_loss("squared_dice", **kwargs)(logits, labels), squared.mean())
    torch.testing.assert_close(create_loss("dice", **kwargs)(logits, labels), plain.mean())


@pytest.mark.parametrize("name", sorted(LOSS_NAMES))
def test_every_loss_gives_finite_gradients(name: str) -> None:
    logits, labels = _logits_and_labels(4)
    loss = create_loss(name, softmax=True, to_onehot_y=True)(logits, labels)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_unknown_loss_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown loss 'tversky2'.*dice_ce.*focal_tversky"):
        create_loss("tversky2")


@pytest.mark.parametrize("name", sorted(LOSS_NAMES))
def test_bundle_config_selects_a_loss_by_name(name: str) -> None:
    """A bundle's ``loss`` section names the loss; the trainer gets that loss."""
    loss_section = {
        "_target_": "unet_monai.losses.create_loss",
        "name": name,
        "to_onehot_y": True,
        "softmax": True,
    }
    parser = load_workflow(HIPPOCAMPUS_BUNDLE, "train", loss=loss_section).parser
    loss = parser.get_parsed_content("loss")
    assert type(loss) is type(create_loss(name, to_onehot_y=True, softmax=True))
    logits, labels = _logits_and_labels(5)
    torch.testing.assert_close(
        loss(logits, labels), create_loss(name, to_onehot_y=True, softmax=True)(logits, labels)
    )
