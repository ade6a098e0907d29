"""Whole-volume inferers: a 2D network slice by slice, or a 3D network window by window."""

from __future__ import annotations

from collections.abc import Sequence

from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer

from unet_monai.inference.tta import MirrorTTAInferer


def volume_inferer(
    roi_size: Sequence[int],
    slice_axis: int | None = 2,
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
        roi_size: the network's input size: 2D for slices, 3D for volumes.
        slice_axis: the volume's spatial axis (0, 1, 2) to slice along, or ``None`` for 3D windows.
        sw_batch_size: windows (slices) per forward pass.
        overlap: fraction by which neighbouring windows overlap.
        mode: "gaussian" or "constant" blending of overlapping windows.
        progress: show a progress bar over the windows of each volume.
        mirror_axes: mirror test-time augmentation along these volume axes (``MirrorTTAInferer``);
            the output is then log-probabilities (a softmax downstream gives the averaged probabilities).
    """
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
