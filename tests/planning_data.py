"""Real datasets of ../shared/data laid out as a user would bring them to ``unet-monai plan`` (links, no
copies): the spinal cord as image / label folders (anisotropic, PSR and LAS), BraTS as a two-channel
nnU-Net-style MSD folder, LGG TIFF slices and ISBI EM PNG sections as 2D folders (masks 0 / 255)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SHARED_DATA, SPINALCORD

BRATS = SHARED_DATA / "brats2015-subset"
LGG = SHARED_DATA / "lgg-kaggle3m-subset" / "kaggle_3m"
EM = SHARED_DATA / "isbi2012-em"
SPINAL_CORD_CASES = (("mt/mt1", "mt/mt1_seg"), ("t2s/t2s", "t2s/t2s_seg"), ("t2/t2", "t2/t2_seg-manual"))
BRATS_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non-enhancing": 3, "enhancing": 4}


def _folders(root: Path) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    return images, labels


def spinal_cord_folders(root: Path) -> tuple[Path, Path]:
    """images/ and labels/ with the MT, T2* and T2 volumes and their cord masks, paired by name."""
    images, labels = _folders(root)
    for image, label in SPINAL_CORD_CASES:
        name = f"{Path(image).name}.nii.gz"
        (images / name).symlink_to(SPINALCORD / f"{image}.nii.gz")
        (labels / name).symlink_to(SPINALCORD / f"{label}.nii.gz")
    return images, labels


def lgg_folders(root: Path) -> tuple[Path, Path]:
    """images/ and labels/ of the LGG 3-channel TIFF slices and their 0 / 255 masks."""
    images, labels = _folders(root)
    for mask in sorted(LGG.glob("*/*_mask.tif")):
        name = mask.name.replace("_mask", "")
        (images / name).symlink_to(mask.with_name(name))
        (labels / name).symlink_to(mask)
    return images, labels


def em_folders(root: Path) -> tuple[Path, Path]:
    """images/ and labels/ of the ISBI 2012 EM training sections (PNG, membrane 0 / cell 255)."""
    images, labels = _folders(root)
    for image in sorted((EM / "train" / "image").glob("*.png")):
        (images / image.name).symlink_to(image)
        (labels / image.name).symlink_to(EM / "train" / "label" / image.name)
    return images, labels


def brats_msd(root: Path, patients: int = 2) -> Path:
    """An MSD folder as nnU-Net writes it: one file per channel (FLAIR, T1c), ``channel_names``, labels
    as name -> value, paths relative to the folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").symlink_to(BRATS / "train")
    training = []
    for patient in sorted(BRATS.glob("train/*"))[:patients]:
        channels = [f"./data/{patient.name}/{name}_subtrMeanDivStd.nii.gz" for name in ("Flair", "T1c")]
        training.append({"image": channels, "label": f"./data/{patient.name}/OTMultiClass.nii.gz"})
    description = {"channel_names": {"0": "FLAIR", "1": "T1c"}, "labels": BRATS_LABELS, "training": training}
    (root / "dataset.json").write_text(json.dumps(description))
    return root
