"""The LGG brain-tumour project's layout (Kaggle ``kaggle_3m``) and the chains that read it.

Layout (``dataset_dir``)::

    <patient>/<patient>_<n>.tif        256x256x3 uint8 (pre-contrast, FLAIR, post-contrast)
    <patient>/<patient>_<n>_mask.tif   256x256 uint8, 255 = FLAIR abnormality

Every slice is a 2D sample; patients are the unit of splitting, so no patient has slices in two
splits. Files are read by MONAI's ``PILReader``: it gives the three channels last and the spatial
axes in (x, y) order (the transpose of the (row, column) order of ``tifffile``), for images and
masks alike, and ``EnsureChannelFirstd`` makes them channel-first (3, 256, 256) and (1, 256, 256).
``ITKReader`` gives the same arrays; the readers MONAI tries by default for ``.tif`` cannot tell a
truncated file from a missing reader library, so bad files are checked here first, each with one
line naming the file: ``lgg_datalist`` reads every pair and checks that the mask exists and has its
image's size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai.data import PILReader
from monai.transforms import (
    AsDiscreted,
    Compose,
    DivisiblePadd,
    EnsureChannelFirstd,
    EnsureTyped,
    Lambdad,
    LoadImaged,
    MapTransform,
    RandFlipd,
    Resized,
)

from unet_monai.io import error_line
from unet_monai.transforms.chains import augmentation_transforms, intensity_transform

MASK_SUFFIX = "_mask"
TIFF_SUFFIXES = (".tif", ".tiff")
# ``<patient>_<n>``: the slice number is the last underscore-separated field of the stem.
SLICE_NUMBER = re.compile(r"_(\d+)$")
# The 8-bit range the original project divided by; "zscore" normalises per image and channel instead.
UINT8_RANGE = (0.0, 255.0)


def read_tiff(path: str | Path) -> np.ndarray:
    """Read one TIFF through MONAI's ``PILReader``; the array is (x, y) or (x, y, channels).

    Raises:
        FileNotFoundError: naming the file, when it does not exist.
        ValueError: naming the file, when it is unreadable or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    reader = PILReader()
    try:
        image = reader.read(str(path))
        array, _ = reader.get_data(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        raise ValueError(f"{path}: unreadable or truncated TIFF ({error_line(error)})") from error
    return np.asarray(array)


def check_pair(image: str | Path, mask: str | Path) -> tuple[int, int]:
    """Read an image and its mask; returns the image's spatial size.

    Raises:
        FileNotFoundError: when the mask is missing, naming the image.
        ValueError: naming the file, when either is unreadable, the mask has channels, or its size
            differs from the image's.
    """
    if not Path(mask).is_file():
        raise FileNotFoundError(f"{image}: no mask beside it (expected {Path(mask).name})")
    image_array = read_tiff(image)
    mask_array = read_tiff(mask)
    if image_array.ndim not in (2, 3):
        raise ValueError(
            f"{image}: expected a 2D image with or without channels, got shape {image_array.shape}"
        )
    if mask_array.ndim != 2:
        raise ValueError(f"{mask}: expected a single-channel 2D mask, got shape {mask_array.shape}")
    if mask_array.shape != image_array.shape[:2]:
        raise ValueError(
            f"{mask}: mask size {tuple(mask_array.shape)} differs from its image's "
            f"{tuple(image_array.shape[:2])}"
        )
    return tuple(image_array.shape[:2])


def mask_path(image: str | Path) -> Path:
    """``a/P_3.tif`` -> ``a/P_3_mask.tif``."""
    image = Path(image)
    return image.with_name(f"{image.stem}{MASK_SUFFIX}{image.suffix}")


def is_mask(path: str | Path) -> bool:
    """Whether a file name is a mask of the layout (``*_mask.tif``)."""
    return Path(path).stem.endswith(MASK_SUFFIX)


def _slice_number(path: Path) -> int:
    match = SLICE_NUMBER.search(path.stem)
    return int(match.group(1)) if match else -1


def tiff_images(folder: str | Path) -> list[Path]:
    """Image TIFFs (not masks) in a folder, sorted by slice number then name."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in TIFF_SUFFIXES and not is_mask(p)]
    return sorted(files, key=lambda p: (_slice_number(p), p.name))


def lgg_image_files(paths: str | Path | Sequence[str | Path], check: bool = True) -> list[str]:
    """The image TIFFs to segment: a file, a folder (searched recursively) or a list of either.

    Masks (``*_mask.tif``) and files of other types are skipped, so a patient folder of the layout,
    or the whole ``kaggle_3m`` folder, can be given as it is.

    Raises:
        FileNotFoundError: a path that does not exist, or no image TIFF at all.
        ValueError: with ``check``, an unreadable / truncated TIFF (naming it).
    """
    found: list[Path] = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if path.is_dir():
            found += sorted(
                (p for p in path.rglob("*") if p.suffix.lower() in TIFF_SUFFIXES and not is_mask(p)),
                key=lambda p: (str(p.parent), _slice_number(p), p.name),
            )
        elif path.is_file():
            if path.suffix.lower() in TIFF_SUFFIXES and not is_mask(path):
                found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not found:
        raise FileNotFoundError(f"{paths}: no image TIFFs (*.tif other than *_mask.tif)")
    if check:
        for path in found:
            read_tiff(path)
    return [str(p.resolve()) for p in found]


def lgg_datalist(
    dataset_dir: str | Path, patients: Sequence[str] | None = None, check: bool = True
) -> list[dict]:
    """``{"image", "label", "patient", "slice"}`` items for every slice of every patient folder.

    Args:
        dataset_dir: the ``kaggle_3m`` folder, holding one folder per patient.
        patients: only these patient folders (default: all, sorted).
        check: read every image and mask (MONAI ``PILReader``) and check their sizes, so that a bad
            file stops everything before training with one line naming it.

    Raises:
        FileNotFoundError: no patient folders, an image without its mask, a mask without its image.
        ValueError: an unreadable / truncated TIFF, or a mask whose size is not its image's.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected the kaggle_3m layout)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if patients is not None:
        unknown = sorted(set(patients) - {p.name for p in folders})
        if unknown:
            raise FileNotFoundError(f"{root}: no folder for patient(s) {', '.join(unknown)}")
        folders = [p for p in folders if p.name in set(patients)]
    items = []
    for folder in folders:
        for mask in sorted(p for p in folder.iterdir() if is_mask(p) and p.suffix.lower() in TIFF_SUFFIXES):
            image = mask.with_name(mask.name.replace(MASK_SUFFIX + mask.suffix, mask.suffix))
            if not image.is_file():
                raise FileNotFoundError(f"{mask}: mask without its image (expected {image.name})")
        for image in tiff_images(folder):
            mask = mask_path(image)
            if check:
                check_pair(image, mask)
            elif not mask.is_file():
                raise FileNotFoundError(f"{image}: no mask beside it (expected {mask.name})")
            items.append(
                {
                    "image": str(image),
                    "label": str(mask),
                    "patient": folder.name,
                    "slice": _slice_number(image),
                }
            )
    if not items:
        raise FileNotFoundError(f"{root}: no <patient>/<patient>_<n>.tif images found")
    return items


def patient_ids(items: Sequence[dict]) -> list[str]:
    """The patients of a datalist, sorted."""
    return sorted({item["patient"] for item in items})


def split_by_patient(
    items: Sequence[dict], fold: int = 0, num_folds: int | None = None
) -> tuple[list[dict], list[dict]]:
    """(train, held-out) items for one fold; patients never straddle the two.

    Patients are sorted and dealt round-robin into ``num_folds`` groups; fold ``k`` holds out group
    ``k``. ``num_folds=None`` is leave-one-patient-out (one fold per patient, fold ``k`` holds out
    the ``k``-th patient).
    """
    patients = patient_ids(items)
    num_folds = len(patients) if num_folds is None else num_folds
    if not 2 <= num_folds <= len(patients):
        raise ValueError(f"num_folds must be between 2 and the {len(patients)} patients, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in 0..{num_folds - 1}, got {fold}")
    held_out = set(patients[fold::num_folds])
    train = [item for item in items if item["patient"] not in held_out]
    return train, [item for item in items if item["patient"] in held_out]


def held_out_patients(items: Sequence[dict], fold: int = 0, num_folds: int | None = None) -> list[str]:
    """The patients fold ``fold`` holds out."""
    return patient_ids(split_by_patient(items, fold, num_folds)[1])


def select_channels(image: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """The channels ``channels`` of a channel-first image (e.g. ``[1]``: FLAIR only)."""
    return image[list(channels)]


def patient_of(image: str | Path) -> str:
    """``.../TCGA_CS_4941_19960909_12.tif`` -> ``TCGA_CS_4941_19960909``."""
    image = Path(image)
    match = SLICE_NUMBER.search(image.stem)
    if match is None:
        raise ValueError(f"{image}: name is not <patient>_<slice number>.tif")
    return image.stem[: match.start()]


class PatientZScored(MapTransform):
    """Z-score each channel with the mean and std of the whole patient, not of the slice.

    The statistics come from every ``<patient>_<n>.tif`` beside the slice (read once per patient and
    kept), so all slices of a patient share one scale, as per-volume normalisation (nnU-Net) does
    for 3D MRI; a tumour that fills half a slice no longer shifts that slice's scale.
    """

    def __init__(self, keys: str, channels: Sequence[int] | None = None) -> None:
        super().__init__(keys)
        self.channels = None if channels is None else list(channels)
        self._statistics: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def statistics(self, image: Path) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std over every slice of the image's patient (3 channels)."""
        key = image.parent / patient_of(image)
        if key not in self._statistics:
            pattern = re.compile(re.escape(key.name) + r"_\d+$")
            slices = [p for p in tiff_images(image.parent) if pattern.fullmatch(p.stem)]
            pixels = np.concatenate([read_tiff(p).reshape(-1, 3) for p in slices]).astype(np.float64)
            self._statistics[key] = (pixels.mean(axis=0), np.maximum(pixels.std(axis=0), 1e-8))
        return self._statistics[key]

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        for key in self.key_iterator(data):
            image = data[key]
            mean, std = self.statistics(Path(image.meta["filename_or_obj"]))
            if self.channels is not None:
                mean, std = mean[self.channels], std[self.channels]
            shape = (-1,) + (1,) * (image.ndim - 1)
            mean_t = torch.as_tensor(mean, dtype=image.dtype).reshape(shape)
            std_t = torch.as_tensor(std, dtype=image.dtype).reshape(shape)
            data[key] = (image - mean_t) / std_t
        return data


def _load_and_scale(
    keys: list[str],
    intensity: str,
    resize_to: Sequence[int] | None,
    channels: Sequence[int] | None = None,
) -> list:
    """Read (PILReader), channel-first, keep ``channels``, binarise the mask, scale, resize."""
    image_key = keys[0]
    transforms: list = [
        LoadImaged(keys=keys, reader=PILReader, image_only=True),
        EnsureChannelFirstd(keys=keys),
    ]
    if channels is not None:
        transforms.append(Lambdad(keys=image_key, func=partial(select_channels, channels=list(channels))))
    if len(keys) > 1:
        transforms.append(AsDiscreted(keys=keys[1], threshold=0.5))
    if intensity == "zscore_patient":
        transforms.append(PatientZScored(keys=image_key, channels=channels))
    else:
        transforms += intensity_transform(image_key, intensity, a_min=UINT8_RANGE[0], a_max=UINT8_RANGE[1])
    if resize_to is not None:
        modes = ["bilinear" if key == image_key else "nearest" for key in keys]
        transforms.append(Resized(keys=keys, spatial_size=list(resize_to), mode=modes))
    return transforms


def build_lgg_train_transforms(
    intensity: str = "range",
    resize_to: Sequence[int] | None = None,
    augment: bool = False,
    aug_prob: float = 0.2,
    rotate_degrees: float = 15.0,
    scale: float = 0.1,
    flip_axes: Sequence[int] = (),
    intensity_augment: bool = False,
    channels: Sequence[int] | None = None,
) -> Compose:
    """Training chain for slices of the layout (``image`` and ``label`` keys).

    Args:
        intensity: "range" (divide by 255, the original project), "zscore" (per slice and channel)
            or "zscore_patient" (per patient and channel: ``PatientZScored``).
        resize_to: resize images (bilinear) and masks (nearest) to this size; ``None`` keeps 256x256.
        augment: random affine (``rotate_degrees``, ``scale``) with probability ``aug_prob``.
        flip_axes: spatial axes to mirror with probability 0.5 (0 is left-right in these slices).
        intensity_augment: noise, intensity scale / shift and gamma (with ``augment``).
        channels: the image channels to keep (0 pre-contrast, 1 FLAIR, 2 post-contrast); ``None``: all.
    """
    keys = ["image", "label"]
    transforms = _load_and_scale(keys, intensity, resize_to, channels)
    transforms.append(EnsureTyped(keys=keys, dtype="float32", track_meta=False))
    transforms += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in flip_axes]
    if augment:
        transforms += augmentation_transforms(
            keys, "image", 2, aug_prob, rotate_degrees, scale, intensity=intensity_augment
        )
    return Compose(transforms)


def build_lgg_eval_transforms(
    intensity: str = "range",
    resize_to: Sequence[int] | None = None,
    with_label: bool = True,
    divisible_by: int = 16,
    channels: Sequence[int] | None = None,
) -> Compose:
    """Validation / inference chain: the slice, read, scaled, resized and padded to ``divisible_by``.

    Only the image is resized and padded: the label stays on the file's grid, and predictions are
    brought back to it with ``Invertd`` (``orig_keys="image"``) before any metric.
    """
    keys = ["image", "label"] if with_label else ["image"]
    transforms = _load_and_scale(keys, intensity, None, channels)
    if resize_to is not None:
        transforms.append(Resized(keys="image", spatial_size=list(resize_to), mode="bilinear"))
    transforms += [DivisiblePadd(keys="image", k=divisible_by), EnsureTyped(keys=keys, dtype="float32")]
    return Compose(transforms)
