"""Segmentation networks: the modular U-Net, its variants, the Ronneberger U-Net, overlap-tile, a registry."""

from unet_monai.networks.axis_ensemble import (
    AxisEnsemble,
    available_member_checkpoints,
    axis_ensemble,
    load_member_checkpoints,
    member_checkpoints,
)
from unet_monai.networks.modular import ModularUNet
from unet_monai.networks.overlap_tile import OverlapTileNet
from unet_monai.networks.registry import create_network, list_networks, register_network
from unet_monai.networks.ronneberger import RonnebergerUNet, valid_input_size, valid_output_size
from unet_monai.networks.variants import VARIANTS, build_variant, features_for_budget

__all__ = [
    "AxisEnsemble",
    "available_member_checkpoints",
    "axis_ensemble",
    "load_member_checkpoints",
    "member_checkpoints",
    "VARIANTS",
    "ModularUNet",
    "OverlapTileNet",
    "RonnebergerUNet",
    "build_variant",
    "create_network",
    "features_for_budget",
    "list_networks",
    "register_network",
    "valid_input_size",
    "valid_output_size",
]
