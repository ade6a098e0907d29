"""Whole-volume inferers: a 2D network slice by slice, or a 3D network window by window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type

from unet_monai.inference.tta import MirrorTTAInferer
from unet_monai.networks.ensemble import AxisEnsemble
from unet_monai.transforms.slices import reverse_neighbour_order, stack_neighbour_slices_of


class SliceEnsembleInferer(Inferer):
    """A 2D network over a volume along one or more slice axes, with neighbouring slices as channels.

    For each axis the volume's slices (each with ``neighbours`` slices on either side stacked as
    channels, as in training) go through MONAI's ``SliceInferer``; the softmax probabilities of the
    axes (and of the mirror images, ``mirror_axes``) are averaged (multi-axis fusion, test-time
    augmentation). The output is the log of that average, so a downstream softmax gives the fused
    probabilities back, and an argmax gives the labels.

    With an ``AxisEnsemble`` as the network, member ``k`` segments the slices along
    ``slice_axes[k]`` (its own axis); any other network segments the slices of every axis.

    Memory: the volume is processed a chunk of slices at a time (enough slices for about
    ``chunk_windows`` windows), and each chunk's probabilities are added in place into one running
    sum. Beyond the input, only that sum (one float32 volume per class) is volume-sized; the
    neighbour stacks, mirror images, blending buffers and softmax exist for one chunk at a time. The
    mirror images of a chunk go through the network in the same batches as the chunk itself.

    Args:
        roi_size: the network's 2D input size (the slices of every axis are padded to it, or
            tiled), or one 2D size per slice axis.
        slice_axes: volume axes to slice along, e.g. ``[2]`` or ``[0, 1, 2]``.
        neighbours: slices on each side stacked as channels (0: plain 2D).
        sw_batch_size, overlap, mode, progress: as for ``SliceInferer``.
        mirror_axes: volume axes (0, 1, 2) to mirror for test-time augmentation, one extra pass each
            (nnU-Net style: probabilities averaged with the unmirrored pass).
        chunk_windows: windows per chunk of slices (default ``4 * sw_batch_size``).
        sw_device, device: where windows run and where the probabilities are summed (as for
            ``SliceInferer``; e.g. ``sw_device="cuda", device="cpu"`` for volumes too big for the GPU).
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
        mirror_axes: Sequence[int] = (),
        chunk_windows: int | None = None,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.slice_axes = list(slice_axes)
        self.neighbours = neighbours
        self.mirror_axes = [int(axis) for axis in mirror_axes]
        if any(axis not in (0, 1, 2) for axis in self.slice_axes + self.mirror_axes):
            raise ValueError(
                f"slice axes {self.slice_axes} and mirror axes {self.mirror_axes}: need axes in 0..2"
            )
        self.roi_sizes = per_axis_roi_sizes(roi_size, self.slice_axes)
        self.overlap = overlap
        self.chunk_windows = chunk_windows if chunk_windows is not None else 4 * sw_batch_size
        self.inferers = [
            _window_inferer(axis_roi_size, axis, sw_batch_size, overlap, mode, progress, sw_device, device)
            for axis, axis_roi_size in zip(self.slice_axes, self.roi_sizes, strict=True)
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
        fused = [self._infer_volume(volume, members, *args, **kwargs) for volume in inputs]
        output = fused[0].unsqueeze(0) if len(fused) == 1 else torch.stack(fused)
        # Carry the input's metadata (affine, applied transforms) as MONAI's own inferers do.
        return convert_to_dst_type(output, inputs, device=output.device)[0]

    def _infer_volume(
        self, volume: torch.Tensor, members: list[Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Log of the mean probabilities over axes and mirrors for one channel-first volume (C, X, Y, Z)."""
        volume = volume.as_tensor() if hasattr(volume, "as_tensor") else volume  # plain tensors inside
        total: torch.Tensor | None = None
        for axis, roi, inferer, member in zip(
            self.slice_axes, self.roi_sizes, self.inferers, members, strict=True
        ):
            length = volume.shape[axis + 1]
            step = self.slices_per_chunk(volume.shape[1:], axis, roi)
            for start in range(0, length, step):
                stop = min(length, start + step)
                probabilities = self._chunk_probabilities(
                    volume, axis, start, stop, inferer, member, *args, **kwargs
                )
                if total is None:
                    total = torch.zeros(
                        (probabilities.shape[0], *volume.shape[1:]),
                        dtype=torch.float32,
                        device=probabilities.device,
                    )
                total.narrow(axis + 1, start, stop - start).add_(probabilities)
        passes = len(self.slice_axes) * (1 + len(self.mirror_axes))
        return total.div_(passes).clamp_min_(1e-8).log_()

    def _chunk_probabilities(
        self,
        volume: torch.Tensor,
        axis: int,
        start: int,
        stop: int,
        inferer: SliceInferer,
        member: Any,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Softmax probabilities of slices ``start .. stop - 1`` along ``axis``, summed over their mirrors."""
        chunk = stack_neighbour_slices_of(volume, axis, self.neighbours, start, stop)
        batch = [chunk]
        for mirror in self.mirror_axes:
            if mirror == axis:  # mirroring along the slice axis reverses each slice's neighbours
                batch.append(reverse_neighbour_order(chunk, volume.shape[0]))
            else:
                batch.append(torch.flip(chunk, [mirror + 1]))
        logits = inferer(torch.stack(batch), member, *args, **kwargs)
        probabilities = torch.softmax(logits.float(), dim=1)
        total = probabilities[0]
        for index, mirror in enumerate(self.mirror_axes, start=1):
            flipped_back = (
                probabilities[index] if mirror == axis else torch.flip(probabilities[index], [mirror + 1])
            )
            total = total + flipped_back
        return total

    def slices_per_chunk(self, spatial_shape: Sequence[int], axis: int, roi: Sequence[int]) -> int:
        """Slices per chunk so that a chunk (with its mirrors) holds about ``chunk_windows`` windows."""
        plane = [size for dim, size in enumerate(spatial_shape) if dim != axis]
        windows_per_slice = 1
        for size, window in zip(plane, roi, strict=True):
            stride = max(1, int(window * (1 - self.overlap)))
            windows_per_slice *= 1 if size <= window else -(-(size - window) // stride) + 1
        per_slice = windows_per_slice * (1 + len(self.mirror_axes))
        return max(1, self.chunk_windows // per_slice)


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
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
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
        sw_device, device: where the windows run and where the output is assembled (MONAI's
            arguments; ``device="cpu"`` keeps a big volume's output off the GPU).
    """
    if slice_axis is not None and (not isinstance(slice_axis, int) or neighbours > 0 or mirror_axes):
        axes = [slice_axis] if isinstance(slice_axis, int) else list(slice_axis)
        return SliceEnsembleInferer(
            roi_size,
            axes,
            neighbours,
            sw_batch_size,
            overlap,
            mode,
            progress,
            mirror_axes=mirror_axes,
            sw_device=sw_device,
            device=device,
        )
    inferer = _window_inferer(roi_size, slice_axis, sw_batch_size, overlap, mode, progress, sw_device, device)
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
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
) -> SliceInferer | SlidingWindowInferer:
    """SliceInferer for 2D roi sizes with a slice axis, SlidingWindowInferer for 3D ones."""
    roi_size = list(roi_size)
    if slice_axis is None:
        if len(roi_size) != 3:
            raise ValueError(f"roi_size {roi_size}: a 3D network needs a 3D roi_size (or set slice_axis)")
        return SlidingWindowInferer(
            roi_size=roi_size,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode=mode,
            progress=progress,
            sw_device=sw_device,
            device=device,
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
        sw_device=sw_device,
        device=device,
    )
