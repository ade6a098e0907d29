"""The U-Net paper's border weight map (read by ``unet_monai.losses.WeightedCrossEntropyLoss``).

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, eq. 2::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances the class frequencies of the label image, ``d1`` / ``d2`` are the distances to the
nearest and second-nearest cell, ``w0 = 10`` and ``sigma = 5`` pixels. Cells are the connected
components (4-connectivity, ``skimage.measure.label``) of the cell class; distances are Euclidean
distance transforms (``scipy.ndimage``). As in the paper's Fig. 3d, the border term is added on the
pixels between cells only (the membrane / background class): inside a cell ``d1`` is 0 and the
term would only blur the cell's edge.

The map is computed once per label image (``BorderWeightMapd``, cached with the label) and then
goes through the spatial augmentation beside the image and the label.
``unet_monai.losses.WeightedCrossEntropyLoss`` reads it as the label's second channel (``ConcatItemsd``
puts it there), so MONAI's ``SupervisedTrainer`` needs no change: it passes ``(pred, label)`` to the
loss as usual.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage
from skimage.measure import label as connected_components

__all__ = ["BorderWeightMapd", "border_weight_map", "class_balance_weights"]

# The border term is dropped where it is below this fraction of w0: d1 + d2 > sigma * sqrt(2 ln(1/TOL)).
TOLERANCE = 1e-4


def class_balance_weights(label: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """``w_c``: per pixel, ``N / (K * N_k)`` for its class ``k`` (``K`` classes present, ``N`` pixels).

    Every present class then carries the same total weight, and the map's mean is 1.
    """
    label = np.asarray(label).astype(np.int64)
    counts = np.bincount(label.ravel(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros_like(counts)
    per_class[present] = label.size / (present.sum() * counts[present])
    return per_class[label].astype(np.float32)


def border_weight_map(
    label: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    cell_class: int = 0,
    num_classes: int = 2,
) -> np.ndarray:
    """Eq. 2 of the U-Net paper for a 2D (or 3D) class-index label image; float32, the label's shape.

    Args:
        label: class indices; ``cell_class`` marks cell interiors, any other class lies between cells.
        w0: the border term's peak (10 in the paper).
        sigma: its width in pixels (5 in the paper).
        cell_class: the class whose connected components are the cells.
        num_classes: number of classes for ``w_c``.
    """
    label = np.asarray(label)
    cells = connected_components(label == cell_class, connectivity=1)
    weight = class_balance_weights(label, num_classes)
    if w0 == 0 or cells.max() < 2:
        return weight
    # Distances beyond the cutoff give a term below TOLERANCE * w0: each cell's distance map is only
    # needed in its bounding box grown by the cutoff, which keeps this linear in the number of cells.
    cutoff = sigma * math.sqrt(2.0 * math.log(1.0 / TOLERANCE))
    margin = int(math.ceil(cutoff)) + 1
    d1 = np.full(label.shape, np.inf, dtype=np.float32)
    d2 = np.full(label.shape, np.inf, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(cells), start=1):
        if box is None:
            continue
        grown = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n))
            for s, n in zip(box, label.shape, strict=True)
        )
        distance = ndimage.distance_transform_edt(cells[grown] != index).astype(np.float32)
        near, second = d1[grown], d2[grown]
        d2[grown] = np.where(distance < near, near, np.minimum(second, distance))
        d1[grown] = np.minimum(near, distance)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
    return weight + np.where(cells == 0, border, 0.0).astype(np.float32)


class BorderWeightMapd(MapTransform):
    """Add ``weight_key``: the border weight map of the label at ``keys`` (one key, channel-first).

    Each channel of the label is treated as one label image (the usual single channel). The result
    has the label's type (``MetaTensor`` or array) and shape, as float32.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        weight_key: str = "weight",
        w0: float = 10.0,
        sigma: float = 5.0,
        cell_class: int = 0,
        num_classes: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"BorderWeightMapd takes one label key, got {self.keys}")
        self.weight_key = weight_key
        self.w0, self.sigma = w0, sigma
        self.cell_class, self.num_classes = cell_class, num_classes

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
            weight = np.stack(
                [
                    border_weight_map(channel, self.w0, self.sigma, self.cell_class, self.num_classes)
                    for channel in np.rint(array).astype(np.int64)
                ]
            )
            d[self.weight_key] = convert_to_dst_type(weight, label, dtype=torch.float32)[0]
        return d
