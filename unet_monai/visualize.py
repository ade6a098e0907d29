"""Overlay pictures: an image slice with its mask blended on top, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.transforms import LoadImage
from monai.visualize import blend_images
from PIL import Image


def overlay_slice(image: np.ndarray, mask: np.ndarray, max_label: int, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a 2D image slice with a label slice blended on top (MONAI ``blend_images``).

    Labels 1..max_label are spread over the first 70 % of the HSV colour map (green, blue, ...), so
    neighbouring classes get distinct colours and a label has the same colour in every panel.
    Background (label 0) stays uncoloured.
    """
    image = image.astype(np.float32)
    low, high = np.percentile(image, [1, 99])
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    colours = mask.astype(np.float32) / max(max_label, 1) * 0.7
    rgb = blend_images(image[None], colours[None], alpha=alpha, cmap="hsv", rescale_arrays=False)
    return (np.clip(np.moveaxis(np.asarray(rgb), 0, -1), 0, 1) * 255).astype(np.uint8)


def save_overlay_png(
    image_path: str | Path,
    mask_paths: list[str | Path],
    png_path: str | Path,
    slice_axis: int = 2,
    slice_index: int | None = None,
) -> Path:
    """Save one slice of a volume with each mask blended on it, side by side (e.g. prediction | reference).

    Args:
        image_path: the image volume.
        mask_paths: masks on the same grid as the image.
        png_path: where the PNG goes.
        slice_axis: the volume axis to cut across.
        slice_index: the slice to show; default: the slice with the most foreground in the first mask.
    """
    loader = LoadImage(image_only=True)
    image = np.asarray(loader(str(image_path)))
    masks = [np.asarray(loader(str(p))) for p in mask_paths]
    for path, mask in zip(mask_paths, masks, strict=True):
        if mask.shape != image.shape:
            raise ValueError(f"{path}: mask shape {mask.shape} differs from image shape {image.shape}")
    if slice_index is None:
        other_axes = tuple(a for a in range(image.ndim) if a != slice_axis)
        slice_index = int(np.argmax((masks[0] > 0).sum(axis=other_axes)))
    image_slice = np.take(image, slice_index, axis=slice_axis)
    max_label = max(int(mask.max()) for mask in masks)
    panels = []
    for mask in masks:
        rgb = overlay_slice(image_slice, np.take(mask, slice_index, axis=slice_axis), max_label)
        # Array rows are the first voxel axis: transpose and flip so the picture is upright.
        panels.append(np.transpose(rgb, (1, 0, 2))[::-1])
    picture = np.ascontiguousarray(np.concatenate(panels, axis=1))
    scale = max(1, 256 // picture.shape[0])
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).resize((picture.shape[1] * scale, picture.shape[0] * scale), Image.NEAREST).save(
        png_path
    )
    return png_path
