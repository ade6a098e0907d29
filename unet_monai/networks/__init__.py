"""Segmentation networks: the Ronneberger U-Net, its overlap-tile wrapper, and a registry of networks."""

from unet_monai.networks.overlap_tile import OverlapTileNet
from unet_monai.networks.registry import create_network, list_networks, register_network
from unet_monai.networks.ronneberger import RonnebergerUNet, valid_input_size, valid_output_size

__all__ = [
    "OverlapTileNet",
    "RonnebergerUNet",
    "create_network",
    "list_networks",
    "register_network",
    "valid_input_size",
    "valid_output_size",
]
