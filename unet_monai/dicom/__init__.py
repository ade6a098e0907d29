"""DICOM in and out: image series, DICOM SEG and PACS exchange, one module each.

Import the modules directly (``from unet_monai.dicom.series import read_series``); this package
imports nothing, so that its modules stay independent of each other.
"""
