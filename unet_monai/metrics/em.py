"""Metrics of the EM membrane bundle: pixel accuracy, foreground F1 / IoU, adapted Rand error.

- Pixel accuracy, F1 and IoU of the foreground (membrane) come from MONAI's confusion-matrix
  metrics (IoU is MONAI's "threat score", TP / (TP + FP + FN)). These are the cell project's metrics.
- The ISBI 2012 challenge ranks by a foreground-restricted Rand score: the cells (connected
  components of the non-membrane pixels, 4-connectivity) of the prediction against those of the
  label, with the label's membrane pixels ignored. ``skimage.metrics.adapted_rand_error`` computes
  it (error = 1 - Rand F-score; 0 is a perfect split into the same cells). The challenge thinned the
  label's membranes first; this does not, so its figures are comparable among our runs, not to the
  leaderboard.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, get_confusion_matrix
from monai.metrics.confusion_matrix import compute_confusion_matrix_metric
from monai.metrics.utils import do_metric_reduction
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error

__all__ = ["AdaptedRandError", "adapted_rand", "cell_regions", "em_scores"]


def _membrane(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """A binary membrane mask as a 2D bool array: one-hot (2, H, W) -> channel 1; (1, H, W) -> squeezed."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim == 3:
        array = array[1] if array.shape[0] == 2 else array[0]
    if array.ndim != 2:
        raise ValueError(f"expected a 2D mask, (1, H, W) or one-hot (2, H, W), got shape {array.shape}")
    return array > 0.5


def cell_regions(membrane: np.ndarray | torch.Tensor) -> np.ndarray:
    """The cells of a membrane mask: connected components of its non-membrane pixels (0 on membrane)."""
    return connected_components(~_membrane(membrane), connectivity=1)


def adapted_rand(
    pred_membrane: np.ndarray | torch.Tensor, label_membrane: np.ndarray | torch.Tensor
) -> tuple[float, float, float]:
    """(error, precision, recall) of ``skimage.metrics.adapted_rand_error`` on the two masks' cells.

    The label's membrane (region 0) is ignored, as in the ISBI 2012 challenge.
    """
    truth, test = cell_regions(label_membrane), cell_regions(pred_membrane)
    if truth.shape != test.shape:
        raise ValueError(f"prediction shape {test.shape} differs from the label's {truth.shape}")
    if truth.max() == 0:
        return float("nan"), float("nan"), float("nan")
    error, precision, recall = adapted_rand_error(truth, test)
    return float(error), float(precision), float(recall)


def _one_hot(membrane: np.ndarray) -> torch.Tensor:
    """(1, 2, H, W) float one-hot of a 2D bool membrane mask (channel 1 = membrane)."""
    mask = torch.as_tensor(membrane, dtype=torch.float32)
    return torch.stack([1.0 - mask, mask])[None]


def em_scores(pred_membrane: np.ndarray | torch.Tensor, label_membrane: np.ndarray | torch.Tensor) -> dict:
    """Pixel accuracy, membrane F1 / IoU, mean IoU of both classes and the adapted Rand error."""
    pred, label = _membrane(pred_membrane), _membrane(label_membrane)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the label's {label.shape}")
    matrix = get_confusion_matrix(_one_hot(pred), _one_hot(label), include_background=True)

    def metric(name: str, channel: int) -> float:
        return float(compute_confusion_matrix_metric(name, matrix[0, channel]))

    error, precision, recall = adapted_rand(pred, label)
    return {
        "accuracy": metric("accuracy", 1),
        "f1": metric("f1 score", 1),
        "iou": metric("threat score", 1),
        "mean_iou": (metric("threat score", 0) + metric("threat score", 1)) / 2,
        "rand_error": error,
        "rand_precision": precision,
        "rand_recall": recall,
    }


class AdaptedRandError(CumulativeIterationMetric):
    """Per-image adapted Rand error (``adapted_rand``) as a MONAI metric, for ``IgniteMetricHandler``.

    ``y_pred`` and ``y``: batch-first membrane masks, one-hot ``(B, 2, H, W)`` or ``(B, 1, H, W)``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("AdaptedRandError needs a label")
        errors = [adapted_rand(p, t)[0] for p, t in zip(y_pred, y, strict=True)]
        return torch.tensor(errors, dtype=torch.float32)[:, None]

    def aggregate(self, reduction: str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("no results to aggregate: call the metric on some images first")
        value, _ = do_metric_reduction(data, reduction or self.reduction)
        return value
