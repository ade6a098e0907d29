"""Segmentation networks: the modular U-Net, its variants, the Ronneberger U-Net, overlap-tile, a registry.

Names are imported from their submodule on first use (``unet_monai.lazy``): importing the package loads
no torch.
"""

from unet_monai.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    globals(),
    {
        "ensemble": (
            "AxisEnsemble",
            "FoldEnsemble",
            "available_member_checkpoints",
            "axis_ensemble",
            "fold_ensemble",
            "load_member_checkpoints",
            "member_checkpoints",
        ),
        "modular": ("ModularUNet",),
        "overlap_tile": ("OverlapTileNet",),
        "registry": ("create_network", "list_networks", "register_network"),
        "ronneberger": ("RonnebergerUNet", "valid_input_size", "valid_output_size"),
        "variants": ("VARIANTS", "build_variant", "features_for_budget"),
    },
)
