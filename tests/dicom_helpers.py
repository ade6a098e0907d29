"""Shared by the DICOM tests: small inference settings, a test patient's identifiers, a checkpoint whose
masks hold every class, and the dciodvfy errors a LABELMAP SEG gets from a validator older than it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from tests.conftest import AXIAL_ONLY, HIPPOCAMPUS, HIPPOCAMPUS_BUNDLE
from unet_monai.bundle import load_workflow
from unet_monai.checkpoints import read_state_dict

SMALL = {**AXIAL_ONLY, "network_def#features": 8}
SMALL_ARGS = ["--set", "network_def#features=8", "--set", "members=" + json.dumps(AXIAL_ONLY["members"])]
HIPPOCAMPUS_IMAGE = HIPPOCAMPUS / "imagesTr" / "hippocampus_001.nii.gz"  # uint8: stored in DICOM exactly
PATIENT_NAME = "Secretname^Patient"
PATIENT_ID = "SECRET-4711"

# Label Map Segmentation Storage (DICOM Supplement 243, final text 2024) is newer than the installed
# dciodvfy (dicom3tools 1.00~20220618). On a LABELMAP SEG that dciodvfy knows no IOD and flags highdicom's
# background segment 0, which Sup 243 allows (LABELMAP segment numbers need not start at 1).
LABELMAP_UNKNOWN_TO_DCIODVFY = {
    "Error - Information Object Not found",
    "Error - SegmentNumber not monotonically increasing from one by one - have SegmentSequence item "
    "number 1 (from one) with SegmentNumber of 0",
}


def balanced_checkpoint(checkpoint: Path, image: Path, output: Path) -> Path:
    """``checkpoint`` with the final layer's biases shifted so that, on the axial slices of ``image``,
    each class's median logit is zero: a network trained one epoch on synthetic data calls every voxel of a
    real volume one class; shifted, it gives masks of all three classes that depend on the image."""
    network = load_workflow(HIPPOCAMPUS_BUNDLE, "inference", **SMALL).parser.get_parsed_content("network_def")
    state = read_state_dict(checkpoint)  # a training's model.pt also holds its settings
    network.load_state_dict(state)
    network.eval()
    volume = np.asarray(nib.load(image).dataobj, dtype=np.float32)
    volume = (volume - volume.mean()) / volume.std()
    k = np.arange(volume.shape[2])
    neighbours = np.clip(k[:, None] + np.arange(-2, 3)[None], 0, volume.shape[2] - 1)
    slices = torch.as_tensor(volume.transpose(2, 0, 1)[neighbours])  # (k, 5, i, j)
    slices = torch.nn.functional.pad(slices, (0, -slices.shape[3] % 16, 0, -slices.shape[2] % 16))
    with torch.no_grad():
        logits = network(slices)
    state["final_conv.bias"] = (
        state["final_conv.bias"] - logits.transpose(0, 1).flatten(1).median(dim=1).values
    )
    torch.save(state, output)
    return output


def write_scanner_study(image: Path, folder: Path, seed: int = 0) -> dict[str, str]:
    """A study folder as a scanner sends it: the volume of ``image`` (MR, 'T1 volume'), a 3-slice
    tri-plane localizer (ImageType LOCALIZER, axial / coronal / sagittal), and a stray text file, all in
    ``folder``. Returns the two series' UIDs {"volume": ..., "localizer": ...} and the study UID."""
    import pydicom
    from pydicom.uid import generate_uid

    from unet_monai.dicom.write_series import write_series

    nifti = nib.load(image)
    study_uid = generate_uid()
    volume = write_series(
        np.asarray(nifti.dataobj),
        nifti.affine,
        folder,
        series_description="T1 volume",
        series_number=2,
        study_uid=study_uid,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
        name_prefix="vol_",
        shuffle_seed=seed,
    )
    localizer_uid = generate_uid()
    plane = np.full((32, 32, 1), 100.0, dtype=np.float32)
    plane[8:24, 8:24] = 300.0
    axial = np.diag([1.0, 1.0, 1.0, 1.0])
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    sagittal = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    for number, affine in enumerate((axial, coronal, sagittal)):
        for path in write_series(
            plane,
            affine,
            folder,
            series_description="Localizer",
            series_number=1,
            study_uid=study_uid,
            series_uid=localizer_uid,
            patient_name=PATIENT_NAME,
            patient_id=PATIENT_ID,
            name_prefix=f"loc{number}_",
        ):
            ds = pydicom.dcmread(path)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.InstanceNumber = number + 1
            ds.save_as(path)
    (folder / "notes.txt").write_text("scanner export log\n")
    (folder / "DICOMDIR_stray").write_bytes(b"\x00\x01 not dicom at all" * 10)
    first = pydicom.dcmread(volume[0], stop_before_pixels=True)
    return {"volume": str(first.SeriesInstanceUID), "localizer": localizer_uid, "study": study_uid}
