"""2.5D input: each slice seen together with its neighbours, as extra channels (MONAI has no built-in)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


def stack_neighbour_slices(volume: torch.Tensor, slice_axis: int, neighbours: int) -> torch.Tensor:
    """Channel-first volume (C, X, Y, Z) -> (C * (2n + 1), X, Y, Z) holding, for every slice, the slices
    ``-n .. +n`` around it along ``slice_axis`` (zero beyond the volume's ends).

    Channel ``c * (2n + 1) + j`` is input channel ``c`` shifted by ``j - n`` slices, so slice ``k`` of the
    result holds slices ``k - n .. k + n`` of the input: any slice sampler or ``SliceInferer`` downstream
    then sees 2.5D input without knowing about it. The centre channel is the input itself.
    """
    if neighbours == 0:
        return volume
    return stack_neighbour_slices_of(volume, slice_axis, neighbours, 0, volume.shape[slice_axis + 1])


def stack_neighbour_slices_of(
    volume: torch.Tensor, slice_axis: int, neighbours: int, start: int, stop: int
) -> torch.Tensor:
    """``stack_neighbour_slices(volume, ...)`` for slices ``start .. stop - 1`` along ``slice_axis`` only.

    Reads only those slices and ``neighbours`` more on each side, so whole-volume inference can stack
    neighbours a chunk of slices at a time instead of holding a (2n + 1)-times copy of the volume.
    """
    if neighbours < 0:
        raise ValueError(f"neighbours must be >= 0, got {neighbours}")
    dim = slice_axis + 1  # skip the channel dimension
    length = volume.shape[dim]
    if not 0 <= start < stop <= length:
        raise ValueError(f"slices {start}..{stop - 1}: outside the {length} slices along axis {slice_axis}")
    first, last = max(0, start - neighbours), min(length, stop + neighbours)
    chunk = volume.narrow(dim, first, last - first)
    if neighbours == 0:
        return chunk
    padding = [0, 0] * (volume.ndim - 1)
    # torch.nn.functional.pad lists dimensions from the last one backwards; zeros beyond the volume's ends
    padding[2 * (volume.ndim - 1 - dim)] = neighbours - (start - first)
    padding[2 * (volume.ndim - 1 - dim) + 1] = neighbours - (last - stop)
    padded = torch.nn.functional.pad(chunk, padding)
    shifted = [padded.narrow(dim, offset, stop - start) for offset in range(2 * neighbours + 1)]
    # (C, 2n + 1, X, Y, Z) -> (C * (2n + 1), X, Y, Z), channel-major as documented
    return torch.stack(shifted, dim=1).flatten(0, 1)


def reverse_neighbour_order(stacked: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Reverse the slice order of a neighbour stack (channel-first, batched or not).

    For a 2D network that sees each slice with its neighbours, mirroring the volume along the slice
    axis is the same as reversing the neighbours of every slice: slice ``k`` of the mirrored volume holds
    the slices ``k + n .. k - n`` of the original, in that order.
    """
    channel_dim = stacked.ndim - 4  # (C', X, Y, Z) or (B, C', X, Y, Z)
    channels = stacked.shape[channel_dim]
    grouped = stacked.unflatten(channel_dim, (in_channels, channels // in_channels))
    return grouped.flip(channel_dim + 1).flatten(channel_dim, channel_dim + 1)


class StackNeighbourSlicesd(MapTransform):
    """Dictionary transform applying ``stack_neighbour_slices`` to the image keys.

    Args:
        keys: image keys (never the label: labels keep one channel).
        slice_axis: the spatial axis (0, 1, 2) the 2D network slices along.
        neighbours: slices taken on each side; the network then needs ``in_channels * (2n + 1)`` inputs.
    """

    def __init__(self, keys: KeysCollection, slice_axis: int, neighbours: int = 1) -> None:
        super().__init__(keys)
        self.slice_axis = slice_axis
        self.neighbours = neighbours

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = stack_neighbour_slices(d[key], self.slice_axis, self.neighbours)
        return d


def neighbour_channels(in_channels: int, neighbours: int) -> int:
    """Input channels a 2D network needs for 2.5D input with ``neighbours`` slices on each side."""
    return in_channels * (2 * neighbours + 1)
