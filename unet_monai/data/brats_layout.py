"""The BraTS 2015 patient-folder layout: datalists, per-slice standardisation and the 2D chains.

One folder per patient (anywhere below the dataset folder, e.g. ``train/``, ``validation/``,
``test/``), each holding the two modalities the bundle reads and, for training, the labels::

    brats_2013_pat0001_1/
        Flair_subtrMeanDivStd.nii.gz   240x240x155 float32, z-scored in the brain
        T1c_subtrMeanDivStd.nii.gz
        OTMultiClass.nii.gz            0 background, 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing
        brainmask.nii.gz

The image of an item is the two modalities (``LoadImaged`` stacks them as channels FLAIR, T1c); the
label is collapsed to whole tumour (label > 0) by the chains. A missing file, or a file whose shape
differs from the FLAIR's, stops everything with one line naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import torch
from monai.config import KeysCollection
from monai.transforms import (
    AsDiscreted,
    Compose,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    MapTransform,
    NormalizeIntensity,
    NormalizeIntensityd,
    RandCropByPosNegLabeld,
    ResizeWithPadOrCropd,
    SqueezeDimd,
)
from monai.utils import convert_to_dst_type

from unet_monai.data.lgg_layout import patient_ids, split_by_patient
from unet_monai.transforms.chains import augmentation_transforms, load_transforms

__all__ = [
    "BRAIN",
    "LABEL",
    "MODALITIES",
    "NormalizeSlicesd",
    "brats_datalist",
    "brats_inference_items",
    "build_brats_eval_transforms",
    "build_brats_train_transforms",
    "patient_ids",
    "patient_name_formatter",
    "split_by_patient",
]

MODALITIES = ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")
LABEL = "OTMultiClass.nii.gz"
BRAIN = "brainmask.nii.gz"
# Axial slices: the last axis once the volume is in RAS.
SLICE_AXIS = 2


def _patient_folders(root: Path) -> list[Path]:
    """Folders at or below ``root`` holding any file of the layout, sorted by patient (folder) name."""
    names = (*MODALITIES, LABEL, BRAIN)
    folders = {path.parent for name in names for path in root.rglob(name)}
    return sorted(folders, key=lambda p: (p.name, str(p)))


def _check_shapes(files: Sequence[Path]) -> None:
    """Every file has the first file's shape (NIfTI headers only: nothing is decompressed)."""
    reference = tuple(nib.load(str(files[0])).shape)
    for path in files[1:]:
        shape = tuple(nib.load(str(path)).shape)
        if shape != reference:
            raise ValueError(f"{path}: shape {shape} differs from {files[0].name}'s {reference}")


def _patient_item(folder: Path, with_label: bool, check: bool) -> dict:
    """The item of one patient folder; raises naming the first missing file."""
    names = (*MODALITIES, LABEL, BRAIN) if with_label else MODALITIES
    for name in names:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing (a patient folder needs {', '.join(names)})")
    if check:
        _check_shapes([folder / name for name in names])
    item = {"image": [str(folder / name) for name in MODALITIES], "patient": folder.name}
    if with_label:
        item |= {"label": str(folder / LABEL), "brain": str(folder / BRAIN)}
    return item


def brats_datalist(
    dataset_dir: str | Path, patients: Sequence[str] | None = None, check: bool = True
) -> list[dict]:
    """``{"image": [flair, t1c], "label", "brain", "patient"}`` for every patient folder, sorted by patient.

    Args:
        dataset_dir: the dataset folder; patient folders are found at any depth below it.
        patients: only these patients (folder names); default all.
        check: compare the shapes of a patient's files (headers only, about 10 ms a patient).

    Raises:
        FileNotFoundError: no such folder, no patient folders, an unknown patient, a missing file.
        ValueError: a file whose shape differs from the patient's FLAIR.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected BraTS patient folders)")
    folders = _patient_folders(root)
    if not folders:
        raise FileNotFoundError(f"{root}: no patient folders holding {MODALITIES[0]}")
    if patients is not None:
        unknown = sorted(set(patients) - {p.name for p in folders})
        if unknown:
            raise FileNotFoundError(f"{root}: no folder for patient(s) {', '.join(unknown)}")
        folders = [p for p in folders if p.name in set(patients)]
    return [_patient_item(folder, with_label=True, check=check) for folder in folders]


def brats_inference_items(paths: str | Path | Sequence[str | Path], check: bool = True) -> list[dict]:
    """``{"image": [flair, t1c], "patient"}`` to segment, from a dataset or patient folder, or files.

    A file stands for its patient folder (so ``unet-monai infer --input PATIENT_FOLDER``, which passes
    every NIfTI file of the folder, gives one item); folders are searched at any depth.

    Raises:
        FileNotFoundError: a path that does not exist, no patient folder, a missing modality.
        ValueError: a modality whose shape differs from the FLAIR's.
    """
    folders: list[Path] = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if path.is_file():
            folders.append(path.parent)
        elif path.is_dir():
            found = _patient_folders(path)
            if not found:
                raise FileNotFoundError(f"{path}: no patient folders holding {MODALITIES[0]}")
            folders += found
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(folder.resolve() for folder in folders))
    return [_patient_item(folder, with_label=False, check=check) for folder in unique]


def patient_name_formatter(metadict: Mapping | None, saver: object) -> dict:
    """``SaveImaged`` names a mask after its patient folder (``<patient>_seg.nii.gz``), not the FLAIR file."""
    filename = (metadict or {}).get("filename_or_obj", "") or ""
    return {"subject": Path(str(filename)).parent.name or "case", "idx": None}


class NormalizeSlicesd(MapTransform):
    """Per-image standardisation of every slice of a volume: each slice and channel to mean 0, std 1.

    MONAI's ``NormalizeIntensity(channel_wise=True)`` applied to the slices as channels, so a volume
    gets exactly what ``NormalizeIntensityd(channel_wise=True)`` gives a 2D training slice (a constant
    slice is only shifted). Metadata (affine, applied operations) are kept, so ``Invertd`` still works.
    """

    def __init__(self, keys: KeysCollection, slice_axis: int = SLICE_AXIS, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.slice_axis = slice_axis
        self.normalize = NormalizeIntensity(channel_wise=True)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            array = torch.as_tensor(image).movedim(self.slice_axis + 1, 1)  # (C, slices, ...)
            shape = array.shape
            flat = self.normalize(array.reshape(shape[0] * shape[1], *shape[2:]))
            array = torch.as_tensor(flat).reshape(shape).movedim(1, self.slice_axis + 1)
            d[key] = convert_to_dst_type(array.contiguous(), image)[0]
        return d


def _load_and_crop(keys: list[str], roi_size: Sequence[int]) -> list:
    """Read (modalities stacked as channels), orient to RAS, whole tumour, centre-crop in-plane."""
    return [
        *load_transforms(keys),
        AsDiscreted(keys=[key for key in keys if key != "image"], threshold=0.5),
        ResizeWithPadOrCropd(keys=keys, spatial_size=[*roi_size, -1]),
    ]


def build_brats_train_transforms(
    roi_size: Sequence[int] = (144, 144),
    num_samples: int = 16,
    pos_fraction: float = 0.5,
    shear_degrees: float = 2.0,
    aug_prob: float = 0.5,
    flip_axes: Sequence[int] = (0, 1),
) -> Compose:
    """Training chain: axial slices with brain, centre crop, per-slice z-score, shear and flips.

    Everything before the slice sampling is deterministic, so a ``CacheDataset`` keeps the cropped
    volumes once. Each draw gives ``num_samples`` axial slices: a fraction ``pos_fraction`` centred on
    tumour voxels, the others on brain voxels outside the tumour (``brainmask``), so slices without
    brain are never drawn.

    Args:
        roi_size: the in-plane centre crop (the paper: 144x144 of the 240x240 slices).
        num_samples: slices drawn from a patient each time it is drawn.
        pos_fraction: fraction of slices centred on tumour.
        shear_degrees: largest shear angle (the paper: 0 to 2 degrees), applied with ``aug_prob``.
        aug_prob: probability of the shear.
        flip_axes: in-plane axes mirrored with probability 0.5 each (left-right 0, front-back 1).
    """
    keys = ["image", "label", "brain"]
    transforms = _load_and_crop(keys, roi_size)
    transforms += [
        EnsureTyped(keys=keys, dtype="float32", track_meta=False),
        # tumour voxels, and brain voxels outside the tumour: found once, cached with the volume
        FgBgToIndicesd(keys="label", image_key="brain", image_threshold=0.5),
        DeleteItemsd(keys="brain"),
        RandCropByPosNegLabeld(
            keys=["image", "label"],
            label_key="label",
            spatial_size=[-1, -1, 1],
            pos=pos_fraction,
            neg=1.0 - pos_fraction,
            num_samples=num_samples,
            fg_indices_key="label_fg_indices",
            bg_indices_key="label_bg_indices",
        ),
        DeleteItemsd(keys=["label_fg_indices", "label_bg_indices"]),
        SqueezeDimd(keys=["image", "label"], dim=SLICE_AXIS + 1),
        NormalizeIntensityd(keys="image", channel_wise=True),
    ]
    shear = math.tan(math.radians(shear_degrees))
    transforms += augmentation_transforms(
        ["image", "label"], "image", 2, aug_prob, 0.0, 0.0, shear, flip_axes, intensity=False
    )
    return Compose(transforms)


def build_brats_eval_transforms(roi_size: Sequence[int] = (144, 144), with_label: bool = True) -> Compose:
    """Validation / inference chain: the whole volume, centre-cropped in-plane, every slice z-scored.

    Only the image is cropped: the label stays on the file's grid (and orientation), and predictions
    are brought back to it with ``Invertd`` (``orig_keys="image"``) before any metric, so tumour
    outside the crop counts as missed.
    """
    transforms = [
        *load_transforms(["image"]),
        ResizeWithPadOrCropd(keys="image", spatial_size=[*roi_size, -1]),
        NormalizeSlicesd(keys="image"),
    ]
    keys = ["image"]
    if with_label:
        transforms = [*load_transforms(["label"], axcodes=None), AsDiscreted(keys="label", threshold=0.5)] + (
            transforms
        )
        keys.append("label")
    transforms.append(EnsureTyped(keys=keys, dtype="float32"))
    return Compose(transforms)
