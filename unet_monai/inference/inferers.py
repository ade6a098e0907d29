"""Whole-volume inferers: a 2D network slice by slice, or a 3D network window by window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type

from unet_monai.inference.tta import MirrorTTAInferer
from unet_monai.networks.axis_ensemble import AxisEnsemble
from unet_monai.transforms.slices import stack_neighbour_slices


class SliceEnsembleInferer(Inferer):
    """A 2D network over a volume along one or more slice axes, with neighbouring slices as channels.

    For each axis the volume's slices (each with ``neighbours`` slices on either side stacked as
    channels, as in training) go through MONAI's ``SliceInferer``; the softmax probabilities of the
    axes are averaged (multi-axis fusion). The output is the log of that average, so a downstream
    softmax gives the fused probabilities back.

    With an ``AxisEnsemble`` as the network, member ``k`` segments the slices along
    ``slice_axes[k]`` (its own axis); any other network segments the slices of every axis.

    Args:
        roi_size: the network's 2D input size (the slices of every axis are padded to it, or
            tiled), or one 2D size per slice axis.
        slice_axes: volume axes to slice along, e.g. ``[2]`` or ``[0, 1, 2]``.
        neighbours: slices on each side stacked as channels (0: plain 2D).
        sw_batch_size, overlap, mode, progress: as for ``SliceInferer``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | Sequence[Sequence[int]],
        slice_axes: Sequence[int],
        neighbours: int = 0,
        sw_batch_size: int = 64,
        overlap: float = 0.25,
        mode: str = "gaussian",
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.slice_axes = list(slice_axes)
        self.neighbours = neighbours
        roi_sizes = per_axis_roi_sizes(roi_size, self.slice_axes)
        self.inferers = [
            SliceInferer(
                roi_size=axis_roi_size,
                spatial_dim=axis,
                sw_batch_size=sw_batch_size,
                overlap=overlap,
                mode=mode,
                progress=progress,
            )
            for axis, axis_roi_size in zip(self.slice_axes, roi_sizes, strict=True)
        ]

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        members = [network] * len(self.slice_axes)
        if isinstance(network, AxisEnsemble):
            if network.slice_axes != self.slice_axes:
                raise ValueError(
                    f"the AxisEnsemble's members segment axes {network.slice_axes}, "
                    f"the inferer slices along {self.slice_axes}"
                )
            members = list(network.members)
        total = None
        for axis, inferer, member in zip(self.slice_axes, self.inferers, members, strict=True):
            stacked = torch.stack([stack_neighbour_slices(item, axis, self.neighbours) for item in inputs])
            probabilities = torch.softmax(inferer(stacked, member, *args, **kwargs), dim=1)
            total = probabilities if total is None else total + probabilities
        fused = torch.log((total / len(self.slice_axes)).clamp_min(1e-8))
        # Carry the input's metadata (affine, applied transforms) as MONAI's own inferers do.
        return convert_to_dst_type(fused, inputs)[0]


def per_axis_roi_sizes(
    roi_size: Sequence[int] | Sequence[Sequence[int]], slice_axes: Sequence[int]
) -> list[list[int]]:
    """One 2D roi size per slice axis: ``roi_size`` repeated, or checked when it is already one per axis."""
    if all(isinstance(size, int) for size in roi_size):
        sizes = [list(roi_size)] * len(slice_axes)
    else:
        sizes = [list(size) for size in roi_size]
    if len(sizes) != len(slice_axes) or any(len(size) != 2 for size in sizes):
        raise ValueError(
            f"roi_size {list(roi_size)}: need one 2D size, or one per slice axis {list(slice_axes)}"
        )
    return sizes


def volume_inferer(
    roi_size: Sequence[int] | Sequence[Sequence[int]],
    slice_axis: int | Sequence[int] | None = 2,
    neighbours: int = 0,
    sw_batch_size: int = 64,
    overlap: float = 0.25,
    mode: str = "gaussian",
    progress: bool = False,
    mirror_axes: Sequence[int] = (),
) -> Inferer:
    """The MONAI inferer that applies a network to a whole volume.

    A 2D ``roi_size`` with a ``slice_axis`` gives a ``SliceInferer``: every slice along that axis
    is cut into windows of ``roi_size`` (padded where the slice is smaller), and ``sw_batch_size``
    windows go through the network at once, so slices are batched. A 3D ``roi_size`` with
    ``slice_axis=None`` gives a ``SlidingWindowInferer``. Overlapping windows are blended with a
    Gaussian weight (``mode="gaussian"``) so that window borders do not show.

    Args:
        roi_size: the network's input size: 2D for slices, 3D for volumes; or one 2D size per
            slice axis (for an ``AxisEnsemble`` whose members were trained on different sizes).
        slice_axis: the volume's spatial axis (0, 1, 2) to slice along, several axes to fuse
            (``SliceEnsembleInferer``), or ``None`` for 3D windows.
        neighbours: 2.5D input: slices on each side stacked as channels, as in training.
        sw_batch_size: windows (slices) per forward pass.
        overlap: fraction by which neighbouring windows overlap.
        mode: "gaussian" or "constant" blending of overlapping windows.
        progress: show a progress bar over the windows of each volume.
        mirror_axes: mirror test-time augmentation along these volume axes (``MirrorTTAInferer``);
            the output is then log-probabilities (a softmax downstream gives the averaged probabilities).
    """
    if slice_axis is not None and (not isinstance(slice_axis, int) or neighbours > 0):
        axes = [slice_axis] if isinstance(slice_axis, int) else list(slice_axis)
        if any(axis not in (0, 1, 2) for axis in axes):
            raise ValueError(f"slice axes {axes}: need axes in 0..2")
        inferer: Inferer = SliceEnsembleInferer(
            roi_size, axes, neighbours, sw_batch_size, overlap, mode, progress
        )
    else:
        inferer = _window_inferer(roi_size, slice_axis, sw_batch_size, overlap, mode, progress)
    if mirror_axes:
        return MirrorTTAInferer(inferer, spatial_axes=mirror_axes)
    return inferer


def _window_inferer(
    roi_size: Sequence[int],
    slice_axis: int | None,
    sw_batch_size: int,
    overlap: float,
    mode: str,
    progress: bool,
) -> SlidingWindowInferer:
    """SliceInferer for 2D roi sizes with a slice axis, SlidingWindowInferer for 3D ones."""
    roi_size = list(roi_size)
    if slice_axis is None:
        if len(roi_size) != 3:
            raise ValueError(f"roi_size {roi_size}: a 3D network needs a 3D roi_size (or set slice_axis)")
        return SlidingWindowInferer(
            roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, progress=progress
        )
    if len(roi_size) != 2:
        raise ValueError(f"roi_size {roi_size}: slice-by-slice inference needs a 2D roi_size")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1, 2 or None, got {slice_axis}")
    return SliceInferer(
        roi_size=roi_size,
        spatial_dim=slice_axis,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode=mode,
        progress=progress,
    )
