"""End-to-end pipelines a user runs as they are, composed from ``unet_monai``."""
