"""Per-class segmentation metrics for one case, computed with MONAI's metrics.

Each entry of ``METRICS`` maps a metric name to a function that takes a one-hot prediction and a one-hot
reference of shape ``[1, C, *spatial]`` and returns one value per foreground class (shape ``[1, C - 1]``).
Adding a metric (precision, recall, HD95, ...) means adding one such function and one dict entry.

Empty reference classes follow MONAI's ``ignore_empty=True`` convention: when a class is absent from the
reference, its Dice and IoU are NaN *whatever the prediction holds* (both empty -> NaN, and reference empty
but prediction not empty -> NaN too, so such false positives are not penalised). When the class is present
in the reference but absent from the prediction the value is 0. NaNs are meant to be skipped by
``np.nanmean`` when averaging.
"""

from collections.abc import Callable

import numpy as np
import torch
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.utils import one_hot

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dice(pred_onehot: torch.Tensor, label_onehot: torch.Tensor) -> torch.Tensor:
    """Dice per foreground class, ``[1, C - 1]``; NaN where the reference class is empty."""
    # A fresh metric object per call: MONAI's cumulative metrics keep a buffer of every call otherwise.
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    return metric(pred_onehot, label_onehot)


def iou(pred_onehot: torch.Tensor, label_onehot: torch.Tensor) -> torch.Tensor:
    """IoU per foreground class, ``[1, C - 1]``; NaN where the reference class is empty."""
    metric = MeanIoU(include_background=False, reduction="none", ignore_empty=True)
    return metric(pred_onehot, label_onehot)


METRICS: dict[str, MetricFn] = {"dice": dice, "iou": iou}


def _drop_channel(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Drop a leading channel dim of size 1 from a 2D/3D label map (``[1, H, W]`` or ``[1, H, W, D]``).

    A size-1 spatial dim dropped by mistake does not change Dice or IoU, which sum over all voxels.
    """
    if x.ndim >= 3 and x.shape[0] == 1:
        return x[0]
    return x


def _to_label_tensor(x: torch.Tensor | np.ndarray, num_classes: int, what: str) -> torch.Tensor:
    """Return ``x`` as a CPU int64 tensor, checking that every value is an integer in 0..num_classes-1."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().as_subclass(torch.Tensor)  # as_subclass drops MetaTensor metadata
        values = torch.unique(x).tolist()
    else:
        x = np.asarray(x)
        values = np.unique(x).tolist()
    bad = [v for v in values if not float(v).is_integer() or not 0 <= v < num_classes]
    if bad:
        shown = [int(v) if float(v).is_integer() else v for v in bad[:10]]
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ValueError(
            f"{what} contains values outside the labels 0..{num_classes - 1}: {shown}{more}; "
            "check num_classes or the label map."
        )
    if isinstance(x, torch.Tensor):
        return x.long()
    return torch.from_numpy(x.astype(np.int64))


def case_metrics(
    pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, num_classes: int
) -> dict[str, list[float]]:
    """Per-class metrics of one predicted label map against its reference label map.

    ``pred`` and ``label`` hold integer labels 0..num_classes-1 and have the same spatial shape, with or
    without a leading channel dim of size 1. Returns ``{metric name: [value for class 1..C-1]}``, e.g.
    ``{"dice": [...], "iou": [...]}``; a value is NaN when that class is empty in the reference.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background + one class), got {num_classes}.")
    pred_map = _drop_channel(pred)
    label_map = _drop_channel(label)
    if tuple(pred_map.shape) != tuple(label_map.shape):
        raise ValueError(
            f"Prediction and reference shapes differ: {tuple(pred.shape)} vs {tuple(label.shape)}."
        )
    pred_t = _to_label_tensor(pred_map, num_classes, "Prediction")
    label_t = _to_label_tensor(label_map, num_classes, "Reference")

    # one_hot wants [batch, 1, *spatial] and gives [batch, num_classes, *spatial].
    pred_onehot = one_hot(pred_t[None, None], num_classes, dim=1)
    label_onehot = one_hot(label_t[None, None], num_classes, dim=1)
    return {name: fn(pred_onehot, label_onehot)[0].tolist() for name, fn in METRICS.items()}
