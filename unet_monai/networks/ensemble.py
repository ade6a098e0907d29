"""An ensemble of 2D networks, one per slice direction of a volume (multi-axis fusion).

A 2D network trained on axial slices sees the volume one way; networks trained on sagittal and
coronal slices see it two other ways, and their errors differ. ``AxisEnsemble`` holds one trained
network per slice axis; ``SliceEnsembleInferer`` applies each member along its own axis and
averages the softmax probabilities. Each member is trained and checkpointed on its own (a plain
network state_dict), so a member checkpoint is also a usable single-direction model.

``FoldEnsemble`` holds the networks of a cross-validation, one per fold, all applied to the same input:
its output is the log of the members' mean softmax probabilities (a softmax downstream gives the
averaged probabilities back, an argmax the fused labels; nnU-Net ensembles its folds the same way). Its
state_dict holds fold ``k``'s weights under ``members.<k>.``, so one ``model.pt`` carries all folds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from unet_monai.checkpoints import CheckpointError, check_fits, load_weights, read_state_dict

__all__ = [
    "AxisEnsemble",
    "axis_ensemble",
    "check_member_count",
    "load_member_checkpoints",
    "member_checkpoints",
]


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
    """Member checkpoints: member 0 is ``first_checkpoint``, member ``k`` is ``<its stem>_member<k>.pt``
    beside it (``model.pt``, ``model_member1.pt``, ... as the bundle's ``train.json`` writes them with
    ``--member k``). Named after the first file, so that ``my_run.pt`` never picks up the
    ``model_member1.pt`` of another run in the same folder."""
    first = Path(first_checkpoint)
    return [first] + [first.with_name(f"{first.stem}_member{k}.pt") for k in range(1, num_members)]


def available_member_checkpoints(first_checkpoint: str | Path, num_members: int) -> list[Path]:
    """``member_checkpoints``, or ``[first_checkpoint]`` alone when no other member's file lies beside it:
    a file that holds the whole ensemble, as a bundle ships its weights (``unet_monai.shipped``)."""
    paths = member_checkpoints(first_checkpoint, num_members)
    if len(paths) > 1 and not any(path.exists() for path in paths[1:]):
        return paths[:1]
    return paths


def _members_text(ensemble: AxisEnsemble, indices: Sequence[int]) -> str:
    """``member 2 (slice axis 1)`` / ``members 1, 2 (slice axes 0, 1)``."""
    axes = ", ".join(str(ensemble.slice_axes[k]) for k in indices)
    if len(indices) == 1:
        return f"member {indices[0]} (slice axis {axes})"
    return f"members {', '.join(str(k) for k in indices)} (slice axes {axes})"


def check_member_count(ensemble: AxisEnsemble, checkpoints: Sequence[str | Path], source: str) -> None:
    """One checkpoint per member, or one file for the whole ensemble; else a ``CheckpointError`` naming
    ``source`` (where the list came from) and the members that have none."""
    count, members = len(checkpoints), len(ensemble.members)
    if count == members or count == 1:
        return
    axes = ", ".join(str(axis) for axis in ensemble.slice_axes)
    missing = list(range(count, members))
    problem = (
        f"{_members_text(ensemble, missing)} {'is' if len(missing) == 1 else 'are'} missing"
        if missing
        else f"{count - members} too many"
    )
    raise CheckpointError(
        f"{source}: {count} checkpoint(s) for an ensemble of {members} members (slice axes {axes}): "
        f"{problem}; give one checkpoint per member, in member order, or one file holding the whole ensemble"
    )


def load_member_checkpoints(ensemble: AxisEnsemble, checkpoints: Sequence[str | Path]) -> None:
    """Load member ``k`` of ``ensemble`` from ``checkpoints[k]`` (plain state_dicts, ``weights_only``), or
    the whole ensemble from one file that holds it (an ``AxisEnsemble`` state_dict: ``members.<k>.*``).

    Only the files given are read: one file of a single network for an ensemble of several members is
    refused, naming the members it lacks (their checkpoints must be named too).

    Raises:
        FileNotFoundError: naming the missing member checkpoint and how to train it.
        CheckpointError: a file that is not a network's weights or does not fit, or a wrong count.
    """
    check_member_count(ensemble, checkpoints, "member_checkpoints")
    for k, path in enumerate(checkpoints):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: checkpoint of ensemble member {k} (slice axis {ensemble.slice_axes[k]}) not found; "
                f"train it with `--member {k}` (unet-monai train trains every member)"
            )
    device = next(ensemble.parameters()).device
    if len(checkpoints) == 1 and len(ensemble.members) > 1:
        path = Path(checkpoints[0])
        state = read_state_dict(path, map_location=device)
        if not any(key.startswith("members.") for key in state):
            missing = list(range(1, len(ensemble.members)))
            raise CheckpointError(
                f"{path}: holds one network, but the ensemble has {len(ensemble.members)} members "
                f"(slice axes {', '.join(str(a) for a in ensemble.slice_axes)}): "
                f"no weights for {_members_text(ensemble, missing)}; name every member's checkpoint "
                f"(--checkpoint {path.name} --checkpoint <member 1> ..., or a comma list), give a file "
                "holding the whole ensemble, or set members to one member"
            )
        check_fits(ensemble, state, path)
        ensemble.load_state_dict(state)
        return
    for member, path in zip(ensemble.members, checkpoints, strict=True):
        load_weights(member, path)


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
