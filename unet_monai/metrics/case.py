"""Per-class segmentation metrics for one case, computed with MONAI's metrics, and the binary Dice.

Each entry of ``METRICS`` maps a metric name to a function that takes a one-hot prediction and a one-hot
reference of shape ``[1, C, *spatial]`` and the voxel spacing in mm (one value per spatial axis), and returns
one value per foreground class (shape ``[1, C - 1]``). Only distance metrics (HD95) use the spacing.
Adding a metric means adding one such function and one dict entry. ``binary_dice`` is the Dice of two
binary masks as one number (the LGG patient Dice, the EM studies); both come from MONAI.

Metrics: ``dice``, ``iou``, ``precision`` (TP / (TP + FP)), ``recall`` (TP / (TP + FN), i.e. sensitivity)
and ``hd95`` (the symmetric 95th-percentile Hausdorff distance between the two surfaces, in mm).

Empty masks. A value is NaN when it is undefined; NaNs are skipped by ``np.nanmean`` when averaging:

================================  =====  =====  =========  ======  =====
reference / prediction of class   dice   iou    precision  recall  hd95
================================  =====  =====  =========  ======  =====
both empty                        NaN    NaN    NaN        NaN     NaN
reference empty, prediction not   NaN    NaN    0          NaN     NaN
reference not, prediction empty   0      0      NaN        0       NaN
both non-empty                    value  value  value      value   value
================================  =====  =====  =========  ======  =====

Dice and IoU follow MONAI's ``ignore_empty=True``: NaN whenever the reference class is empty, so a false
positive in an absent class does not count against them (as nnU-Net does when the class is absent from both
masks); precision is the metric that shows such false positives (0). Precision and recall are NaN exactly
when their denominator is 0. HD95 is only defined between two non-empty surfaces: a missed class has
Dice 0 and HD95 NaN, so the HD95 mean covers the cases where the class was found at all (read it next to
Dice or recall).
"""

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import (
    DiceMetric,
    MeanIoU,
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    get_confusion_matrix,
)
from monai.networks.utils import one_hot

MetricFn = Callable[[torch.Tensor, torch.Tensor, Sequence[float]], torch.Tensor]


def dice(pred_onehot: torch.Tensor, label_onehot: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Dice per foreground class, ``[1, C - 1]``; NaN where the reference class is empty."""
    # A fresh metric object per call: MONAI's cumulative metrics keep a buffer of every call otherwise.
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    return metric(pred_onehot, label_onehot)


def binary_dice(pred: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    """Dice of two binary masks of any dimension (non-zero = foreground), with MONAI's ``compute_dice``:
    2 TP / (2 TP + FP + FN) over every pixel; 1.0 when both are empty."""
    p = torch.as_tensor(np.asarray(pred) > 0, dtype=torch.float32)[None, None]
    r = torch.as_tensor(np.asarray(reference) > 0, dtype=torch.float32)[None, None]
    if p.shape != r.shape:
        raise ValueError(
            f"prediction shape {tuple(p.shape[2:])} differs from the reference's {tuple(r.shape[2:])}"
        )
    return float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])


def iou(pred_onehot: torch.Tensor, label_onehot: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """IoU per foreground class, ``[1, C - 1]``; NaN where the reference class is empty."""
    metric = MeanIoU(include_background=False, reduction="none", ignore_empty=True)
    return metric(pred_onehot, label_onehot)


def precision(
    pred_onehot: torch.Tensor, label_onehot: torch.Tensor, spacing: Sequence[float]
) -> torch.Tensor:
    """TP / (TP + FP) per foreground class, ``[1, C - 1]``; NaN where the prediction class is empty."""
    confusion = get_confusion_matrix(pred_onehot, label_onehot, include_background=False)
    return compute_confusion_matrix_metric("precision", confusion)


def recall(pred_onehot: torch.Tensor, label_onehot: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """TP / (TP + FN) per foreground class, ``[1, C - 1]``; NaN where the reference class is empty."""
    confusion = get_confusion_matrix(pred_onehot, label_onehot, include_background=False)
    return compute_confusion_matrix_metric("recall", confusion)


def hd95(pred_onehot: torch.Tensor, label_onehot: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """95th-percentile Hausdorff distance in mm per foreground class, ``[1, C - 1]``.

    NaN unless the class is non-empty in both masks (MONAI would warn and return NaN or inf there).
    """
    values = []
    for c in range(1, pred_onehot.shape[1]):
        pred_c = pred_onehot[:, c : c + 1]
        label_c = label_onehot[:, c : c + 1]
        if not (pred_c.any() and label_c.any()):
            values.append(float("nan"))
            continue
        with warnings.catch_warnings():
            # MONAI 1.6 calls one of its own deprecated arguments inside; not something a user can act on.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            distance = compute_hausdorff_distance(
                pred_c, label_c, include_background=True, percentile=95, spacing=list(spacing)
            )
        values.append(distance.item())
    return torch.tensor([values], dtype=torch.float64)


METRICS: dict[str, MetricFn] = {
    "dice": dice,
    "iou": iou,
    "precision": precision,
    "recall": recall,
    "hd95": hd95,
}


def _drop_channel(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Drop a leading channel dim of size 1 from a 2D/3D label map (``[1, H, W]`` or ``[1, H, W, D]``).

    A size-1 spatial dim dropped by mistake does not change the overlap metrics, which sum over all voxels;
    ``case_metrics`` then reports the spacing length mismatch instead of computing a wrong HD95.
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
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
) -> dict[str, list[float]]:
    """Per-class metrics of one predicted label map against its reference label map.

    ``pred`` and ``label`` hold integer labels 0..num_classes-1 and have the same spatial shape, with or
    without a leading channel dim of size 1. ``spacing`` is the voxel size in mm along each spatial axis
    (default 1 mm); only HD95 uses it. Returns ``{metric name: [value for class 1..C-1]}`` for every metric
    of ``METRICS``; see the module docstring for the NaN conventions of empty masks.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background + one class), got {num_classes}.")
    pred_map = _drop_channel(pred)
    label_map = _drop_channel(label)
    if tuple(pred_map.shape) != tuple(label_map.shape):
        raise ValueError(
            f"Prediction and reference shapes differ: {tuple(pred.shape)} vs {tuple(label.shape)}."
        )
    if spacing is None:
        spacing = [1.0] * label_map.ndim
    spacing = [float(s) for s in spacing]
    if len(spacing) != label_map.ndim:
        raise ValueError(
            f"Got {len(spacing)} spacing values {spacing} for a {label_map.ndim}D label map of shape "
            f"{tuple(label_map.shape)}; give one value per spatial axis."
        )
    pred_t = _to_label_tensor(pred_map, num_classes, "Prediction")
    label_t = _to_label_tensor(label_map, num_classes, "Reference")

    # one_hot wants [batch, 1, *spatial] and gives [batch, num_classes, *spatial].
    pred_onehot = one_hot(pred_t[None, None], num_classes, dim=1)
    label_onehot = one_hot(label_t[None, None], num_classes, dim=1)
    return {name: fn(pred_onehot, label_onehot, spacing)[0].tolist() for name, fn in METRICS.items()}
