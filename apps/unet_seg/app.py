"""The application of this folder: ``unet_monai.deploy.app`` with this folder's ``rules.json``."""

from pathlib import Path

from unet_monai.deploy.app import UnetSegApplication, main

RULES = Path(__file__).resolve().with_name("rules.json")
__all__ = ["RULES", "UnetSegApplication", "main"]
