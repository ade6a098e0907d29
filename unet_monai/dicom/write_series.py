"""Write a NIfTI-like volume (``array[i, j, k]`` + RAS affine) as a single-frame DICOM series.

Each slice ``k`` becomes one MR or CT Image Storage file: DICOM columns run along ``i`` and rows
along ``j`` (``frame = array[:, :, k].T``), ImageOrientationPatient holds the LPS directions of the
affine's first two columns, PixelSpacing their lengths (row spacing first), ImagePositionPatient
the LPS position of voxel ``(0, 0, k)``. ``unet_monai.dicom.series.read_series`` reads it back with
the same array and affine, except that it orders slices along ``cross(row, column)``: a volume
whose affine has a negative determinant (LAS, PSR, ...) comes back with ``k`` reversed (same world
positions, ``affine[:3, 2]`` negated), as it would from any DICOM reader.

Integer data that fits 16 bits is stored as is; other data is stored as uint16 with a rescale slope
and intercept, so values come back within half a slope. The idea follows ``tools/lv_fixture.py``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from unet_monai.io import atomic_output, output_path

SOP_CLASSES = {"MR": MRImageStorage, "CT": CTImageStorage}
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's root + 1


@dataclass(frozen=True)
class Encoding:
    """How values are stored: ``stored = round((value - intercept) / slope)`` as ``dtype``."""

    dtype: type
    slope: float
    intercept: float

    @property
    def signed(self) -> bool:
        return self.dtype is np.int16

    def encode(self, values: np.ndarray) -> np.ndarray:
        stored = np.rint((values.astype(np.float64) - self.intercept) / self.slope)
        info = np.iinfo(self.dtype)
        return np.clip(stored, info.min, info.max).astype(self.dtype)


def choose_encoding(array: np.ndarray) -> Encoding:
    """Stored as is when all values are integers that fit uint16 or int16, else rescaled uint16."""
    values = np.asarray(array, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if np.all(np.isfinite(values)) and np.array_equal(values, np.rint(values)):
        if low >= 0 and high <= 65535:
            return Encoding(np.uint16, 1.0, 0.0)
        if low >= -32768 and high <= 32767:
            return Encoding(np.int16, 1.0, 0.0)
    if not np.all(np.isfinite(values)):
        raise ValueError("the volume has NaN or infinite values, which DICOM cannot store")
    slope = float(_ds((high - low) / 65535)) if high > low else 1.0
    intercept = float(_ds(low))
    return Encoding(np.uint16, slope, intercept)


def _ds(value: float) -> str:
    """A decimal string value (at most 16 characters, as DICOM's DS allows)."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.8e}"
    return "0" if text in ("-0", "0.0") else text


def geometry(affine: np.ndarray) -> tuple[list[float], list[float], float]:
    """ImageOrientationPatient, PixelSpacing (row spacing first) and SliceThickness of an RAS affine.

    SliceThickness is the slice step along the normal (the whole step unless the affine is sheared,
    as for a gantry tilt).
    """
    affine = np.asarray(affine, dtype=np.float64)
    column_step = affine[:3, 0] * RAS_TO_LPS  # i: next column
    row_step = affine[:3, 1] * RAS_TO_LPS  # j: next row
    slice_step = affine[:3, 2] * RAS_TO_LPS
    sizes = [float(np.linalg.norm(v)) for v in (column_step, row_step, slice_step)]
    if min(sizes) == 0:
        raise ValueError(f"affine has a zero-length axis: {affine.tolist()}")
    row_cosine, column_cosine = column_step / sizes[0], row_step / sizes[1]
    if abs(row_cosine @ column_cosine) > 1e-4:
        raise ValueError("the affine's first two axes are not perpendicular; DICOM cannot store that shear")
    thickness = abs(float(slice_step @ np.cross(row_cosine, column_cosine)))
    if thickness < 1e-6 * sizes[2]:
        raise ValueError("the affine's third axis lies in the slice plane")
    return [*row_cosine.tolist(), *column_cosine.tolist()], [sizes[1], sizes[0]], thickness


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    return meta


def _common_header(
    modality: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    patient_name: str,
    patient_id: str,
    series_description: str,
    series_number: int,
) -> Dataset:
    """Patient, study, series, frame-of-reference and equipment attributes shared by every slice."""
    now = datetime.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "unet-monai"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if modality == "MR":
        ds.ScanningSequence = "RM"  # research mode: the real sequence is unknown
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
    else:
        ds.KVP = ""
        ds.AcquisitionNumber = 1
    return ds


def write_series(
    array_ijk: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    modality: str = "MR",
    series_description: str = "",
    series_number: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "Anonymous^Test",
    patient_id: str = "UNET-MONAI-TEST",
    name_prefix: str = "",
    shuffle_seed: int | None = None,
) -> list[Path]:
    """Write ``array_ijk`` (3D, ``[column, row, slice]``) with RAS ``affine`` as one DICOM file per slice.

    Files are named ``<name_prefix><number>.dcm``; ``number`` is the slice index, or a random
    permutation of it when ``shuffle_seed`` is given (so that a reader must order by geometry).
    InstanceNumber is still the slice index + 1. Each file is written atomically (:mod:`unet_monai.io`);
    a name leading outside ``folder`` is refused. Returns the written paths in slice order.
    """
    modality = modality.upper()
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASSES)}, not {modality!r}")
    array = np.asarray(array_ijk)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array [i, j, k], got shape {array.shape}")
    orientation, pixel_spacing, thickness = geometry(affine)
    encoding = choose_encoding(array)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = _common_header(
        modality,
        study_uid or generate_uid(),
        series_uid or generate_uid(),
        generate_uid(),
        patient_name,
        patient_id,
        series_description,
        series_number,
    )
    numbers = np.arange(array.shape[2])
    if shuffle_seed is not None:
        numbers = np.random.default_rng(shuffle_seed).permutation(numbers)
    stored = encoding.encode(array)
    affine = np.asarray(affine, dtype=np.float64)
    paths = []
    for k in range(array.shape[2]):
        ds = Dataset()
        ds.update(header)
        sop_uid = generate_uid()
        ds.file_meta = _file_meta(header.SOPClassUID, sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        position = (affine @ np.array([0.0, 0.0, float(k), 1.0]))[:3] * RAS_TO_LPS
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
        ds.SliceThickness = _ds(thickness)
        ds.SliceLocation = _ds(float(position[2]))
        _set_pixels(ds, stored[:, :, k].T, encoding, modality)
        path = output_path(folder, f"{name_prefix}{int(numbers[k]):04d}.dcm")
        with atomic_output(path) as temporary:
            ds.save_as(temporary, enforce_file_format=True)
        paths.append(path)
    return paths


def _set_pixels(ds: Dataset, frame: np.ndarray, encoding: Encoding, modality: str) -> None:
    """Image pixel module for a ``(rows, columns)`` frame of stored values."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = frame.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if encoding.signed else 0
    if modality == "CT" or encoding.slope != 1.0 or encoding.intercept != 0.0:
        ds.RescaleSlope = _ds(encoding.slope)
        ds.RescaleIntercept = _ds(encoding.intercept)
        ds.RescaleType = "HU" if modality == "CT" else "US"
    ds.PixelData = np.ascontiguousarray(frame).tobytes()
