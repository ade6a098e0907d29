"""FoldEnsemble: the networks of a cross-validation, one per fold, applied as one network.

Each member is the same architecture trained on another fold; the ensemble's output is the log of the
members' mean softmax probabilities, so a softmax downstream gives the averaged probabilities back and
an argmax gives the fused labels (nnU-Net ensembles its folds the same way, on probabilities). Its
state_dict holds member ``k``'s weights under ``members.<k>.``, so one ``model.pt`` carries all folds.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class FoldEnsemble(nn.Module):
    """``len(members)`` networks of one architecture; forward: log of the mean softmax over members."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("FoldEnsemble needs at least one member network")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(member(x), dim=1) for member in self.members]).mean(dim=0)
        return torch.log(probabilities.clamp_min(1e-8))


def fold_ensemble(network: nn.Module, num_folds: int) -> nn.Module:
    """``network`` itself for one fold, else a ``FoldEnsemble`` of ``num_folds`` copies of it (weights
    are loaded afterwards, from a checkpoint with ``members.<k>.`` keys)."""
    if num_folds < 1:
        raise ValueError(f"ensemble_folds: must be at least 1, got {num_folds}")
    if num_folds == 1:
        return network
    return FoldEnsemble([copy.deepcopy(network) for _ in range(num_folds)])
