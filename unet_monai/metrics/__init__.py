"""Segmentation metrics: per-case, per-class scores (``case``), one binary Dice, the EM scores (``em``)."""

from unet_monai.lazy import lazy_exports

_NAMES = {
    "METRICS": "case",
    "binary_dice": "case",
    "case_metrics": "case",
    "dice": "case",
    "hd95": "case",
    "iou": "case",
    "precision": "case",
    "recall": "case",
    "AdaptedRandError": "em",
    "adapted_rand": "em",
    "cell_regions": "em",
    "em_scores": "em",
}
__getattr__, __dir__ = lazy_exports(__name__, _NAMES, submodules=("case", "em"))
__all__ = sorted(_NAMES)
