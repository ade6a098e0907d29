"""An ensemble of 2D networks, one per slice direction of a volume (multi-axis fusion).

A 2D network trained on axial slices sees the volume one way; networks trained on sagittal and
coronal slices see it two other ways, and their errors differ. ``AxisEnsemble`` holds one trained
network per slice axis; ``SliceEnsembleInferer`` applies each member along its own axis and
averages the softmax probabilities. Each member is trained and checkpointed on its own (a plain
network state_dict), so a member checkpoint is also a usable single-direction model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["AxisEnsemble", "axis_ensemble", "load_member_checkpoints", "member_checkpoints"]


class AxisEnsemble(nn.Module):
    """One 2D network per slice axis; ``members[k]`` segments slices along ``slice_axes[k]``.

    Apply it to volumes with ``SliceEnsembleInferer`` (``unet_monai.inference.volume_inferer`` with
    the same list of slice axes); called directly on a batch of slices it has no single answer.
    """

    def __init__(self, members: Sequence[nn.Module], slice_axes: Sequence[int]) -> None:
        super().__init__()
        if not members or len(members) != len(slice_axes):
            raise ValueError(
                f"need one member per slice axis: {len(members)} members, axes {list(slice_axes)}"
            )
        if any(axis not in (0, 1, 2) for axis in slice_axes):
            raise ValueError(f"slice axes must be 0, 1 or 2, got {list(slice_axes)}")
        self.members = nn.ModuleList(members)
        self.slice_axes = [int(axis) for axis in slice_axes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "AxisEnsemble segments volumes through SliceEnsembleInferer (one member per slice axis); "
            "call one of its .members on a batch of slices"
        )


def axis_ensemble(network: nn.Module, slice_axes: Sequence[int]) -> AxisEnsemble:
    """``len(slice_axes)`` independent copies of ``network`` (then load each member's checkpoint)."""
    return AxisEnsemble([copy.deepcopy(network) for _ in slice_axes], slice_axes)


def member_checkpoints(first_checkpoint: str | Path, num_members: int) -> list[Path]:
    """Member checkpoints: member 0 is ``first_checkpoint`` (``model.pt``), member ``k`` is
    ``model_member<k>.pt`` beside it, as the bundle's ``train.json`` writes them (``--member k``)."""
    first = Path(first_checkpoint)
    return [first] + [first.with_name(f"model_member{k}.pt") for k in range(1, num_members)]


def load_member_checkpoints(ensemble: AxisEnsemble, checkpoints: Sequence[str | Path]) -> None:
    """Load member ``k`` of ``ensemble`` from ``checkpoints[k]`` (plain state_dicts, ``weights_only``).

    Raises:
        FileNotFoundError: naming the missing member checkpoint and how to train it.
    """
    if len(checkpoints) != len(ensemble.members):
        raise ValueError(f"{len(checkpoints)} checkpoints for {len(ensemble.members)} ensemble members")
    for k, (member, path) in enumerate(zip(ensemble.members, checkpoints, strict=True)):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: checkpoint of ensemble member {k} (slice axis {ensemble.slice_axes[k]}) not found; "
                f"train it with `--member {k}` (unet-monai train trains every member)"
            )
        device = next(member.parameters()).device
        member.load_state_dict(torch.load(path, map_location=device, weights_only=True))
