"""Patient volumes from the LGG bundle's per-slice masks: 3D post-processing and the patient's Dice.

The bundle segments ``<patient>_<n>.tif`` slices one at a time and writes ``<patient>_<n>_seg.tif``
beside each other. A lower-grade glioma is one connected region in 3D, so stray marks on other
slices are false positives. As Buda et al. (2019) did, ``keep_largest_tumour`` stacks each patient's
masks by slice number and keeps only the largest 3D connected component (MONAI's
``KeepLargestConnectedComponent``, 26-connected), rewriting the masks it changes atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent
from PIL import Image

from unet_monai.data.lgg_layout import lgg_image_files, mask_path, patient_of
from unet_monai.io import atomic_output, write_text
from unet_monai.metrics import binary_dice

SEG_POSTFIX = "_seg"


def predicted_mask_path(image: str | Path, pred_dir: str | Path) -> Path:
    """``.../P_3.tif`` -> ``pred_dir/P_3_seg.tif``: where the bundle writes the slice's mask."""
    image = Path(image)
    return Path(pred_dir) / f"{image.stem}{SEG_POSTFIX}{image.suffix}"


def slices_by_patient(images: Sequence[str | Path]) -> dict[str, list[Path]]:
    """Image paths grouped by patient (``<patient>_<n>`` stems), each group in slice order."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    for image in map(Path, images):
        patient = patient_of(image)
        groups.setdefault(patient, []).append((int(image.stem[len(patient) + 1 :]), image))
    return {patient: [path for _, path in sorted(items)] for patient, items in sorted(groups.items())}


def read_mask(path: Path) -> np.ndarray:
    """A 0 / 255 mask TIFF as a bool array (row, column)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask (was every slice segmented?)")
    with Image.open(path) as image:
        return np.asarray(image) > 0


def write_mask_atomically(mask: np.ndarray, path: Path) -> None:
    """Write a bool mask as a 0 / 255 uint8 TIFF through ``unet_monai.io.atomic_output`` (temporary file,
    fsync, checked, rename); a full disk raises ``OutputError`` naming ``path``."""
    with atomic_output(path) as temporary:
        Image.fromarray(mask.astype(np.uint8) * 255).save(temporary, format="TIFF")


def keep_largest_tumour(images: Sequence[str | Path] | str | Path, pred_dir: str | Path) -> dict[str, int]:
    """Keep only the largest 3D component of each patient's predicted masks; returns pixels removed.

    Args:
        images: the segmented image TIFFs (files or folders, as ``lgg_image_files`` takes them).
        pred_dir: the folder holding their ``<stem>_seg.tif`` masks; changed masks are rewritten.
    """
    removed: dict[str, int] = {}
    keep = KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)
    for patient, slices in slices_by_patient(lgg_image_files(images, check=False)).items():
        paths = [predicted_mask_path(image, pred_dir) for image in slices]
        volume = np.stack([read_mask(path) for path in paths])
        largest = keep(torch.from_numpy(volume[None].astype(np.uint8)))[0].numpy() > 0
        removed[patient] = int(volume.sum() - largest.sum())
        for path, before, after in zip(paths, volume, largest, strict=True):
            if not np.array_equal(before, after):
                write_mask_atomically(after, path)
    return removed


def patient_dice(images: Sequence[str | Path] | str | Path, pred_dir: str | Path) -> dict[str, float]:
    """Each patient's Dice: its masks in ``pred_dir`` against the ``_mask.tif`` beside each image."""
    scores = {}
    for patient, slices in slices_by_patient(lgg_image_files(images, check=False)).items():
        predicted = np.stack([read_mask(predicted_mask_path(image, pred_dir)) for image in slices])
        truth = np.stack([read_mask(mask_path(image)) for image in slices])
        scores[patient] = binary_dice(predicted, truth)
    return scores


def write_patient_dice(scores: dict[str, float], csv_path: str | Path) -> dict[str, float]:
    """Write ``patient,dice`` rows (and their mean) to ``csv_path``; returns ``scores``."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["patient", "dice"])
    writer.writerows([patient, f"{value:.4f}"] for patient, value in scores.items())
    if scores:
        writer.writerow(["mean", f"{np.mean(list(scores.values())):.4f}"])
    write_text(csv_path, text.getvalue())
    return scores
