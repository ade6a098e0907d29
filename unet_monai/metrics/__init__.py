"""Segmentation metrics: per-case, per-class scores (``case``), one binary Dice, the EM scores (``em``)."""

from unet_monai.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    globals(),
    {
        "case": ("METRICS", "binary_dice", "case_metrics", "dice", "hd95", "iou", "precision", "recall"),
        "em": ("AdaptedRandError", "adapted_rand", "cell_regions", "em_scores"),
    },
    submodules=("case", "em"),
)
