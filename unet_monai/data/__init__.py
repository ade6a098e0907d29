"""Dataset layouts: datalists for the supported layouts and the synthetic data generator."""

from unet_monai.data.datalists import (
    case_name,
    folder_datalist,
    msd_datalist,
    msd_label_names,
    split_datalist,
)
from unet_monai.data.synthetic import make_synthetic_dataset

__all__ = [
    "case_name",
    "folder_datalist",
    "make_synthetic_dataset",
    "msd_datalist",
    "msd_label_names",
    "split_datalist",
]
