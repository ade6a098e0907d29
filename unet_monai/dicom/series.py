"""Read a folder of single-frame DICOM images (several series, stray files allowed) into a volume.

Conventions (the same as MONAI's ``ITKReader`` and NIfTI / nibabel):

- ``DicomVolume.array`` is float32 indexed ``[i, j, k]`` = ``[column, row, slice]``: ``i`` runs
  along a DICOM row (the first three ImageOrientationPatient values), ``j`` down a column (the last
  three) and ``k`` over the slices, sorted by ascending position along the slice normal
  ``cross(row cosine, column cosine)`` (never by file name or InstanceNumber).
- ``DicomVolume.affine`` maps ``(i, j, k, 1)`` to RAS world millimetres: DICOM's LPS patient
  coordinates with the first two rows negated.
- Values are the modality LUT output ``stored * RescaleSlope + RescaleIntercept``; a MONOCHROME1
  image's stored values are first reflected over their range (``low + high - stored``) so that
  larger values are brighter, as in ``unet_monai.data.lv_layout``.

Errors and log messages name files, folders and UIDs only, never patient attributes; UIDs and
descriptions come from the files, so they are shown escaped and cut (:func:`shown`).

Not every DICOM file with pixel data is an image: a DICOM SEG (our own output, or anyone's), a
structured report, a presentation state or a key object selection (:data:`NOT_IMAGE_MODALITIES`) is
skipped by name, with a log line, and never counted as a series. NIfTI files (our own masks) and an
interrupted atomic write's ``.partial-*`` files are skipped without being read.

Against MONAI 1.6's readers (checked in ``tests/test_dicom_series.py``): ``ITKReader`` gives the
same array and affine on regular series, oblique ones and MONOCHROME1, but its affine ignores a
gantry tilt (slice positions sheared off the normal; here the affine follows the positions).
``PydicomReader`` stacks slices in InstanceNumber order (the same world positions, but ``k``
reversed when InstanceNumber runs against the normal, scrambled when it is not monotonic in
position) and does not invert MONOCHROME1. Both load series with missing, duplicated or unevenly
spaced slices onto one uniform grid (ITK only warns); ``read_series`` refuses them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from unet_monai.io import NIFTI_SUFFIXES, PARTIAL_PREFIX

if TYPE_CHECKING:
    from monai.data import MetaTensor

logger = logging.getLogger(__name__)

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Files with these endings are never DICOM (holds_dicom_images does not read them).
NOT_DICOM_SUFFIXES = (".nii", ".nii.gz", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".json", ".txt", ".csv")
# Modalities that are not images to segment (SEG objects have pixel data, the others usually not).
NOT_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC"})
# SOP classes that are not images whatever their Modality says: Segmentation (and Label Map
# Segmentation) Storage, structured reports, presentation states.
NOT_IMAGE_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66.",
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
)
SHOWN_LENGTH = 100  # characters of untrusted header text shown in a message
GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
# Direction cosines within this agree. Slice positions agree within 1% of the slice spacing or
# 0.02 mm, whichever is larger (some scanners write positions with two decimals).
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE = 0.01
POSITION_TOLERANCE_MM = 0.02
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def shown(text: object, limit: int = SHOWN_LENGTH) -> str:
    """Untrusted header text (a UID, a description) fit for a one-line message: control characters
    (newlines, NUL, ...) escaped, cut to ``limit`` characters (``...`` marks a cut)."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def not_an_image(ds: Dataset) -> str | None:
    """Why a DICOM object is not an image to segment (a SEG, SR, PR, KO, ...), or None for an image."""
    modality = str(ds.get("Modality", "")).strip().upper()
    sop_class = str(ds.get("SOPClassUID", ""))
    if modality in NOT_IMAGE_MODALITIES:
        return f"a DICOM {modality} object, not an image (SOP class {shown(sop_class)})"
    if sop_class.startswith(NOT_IMAGE_SOP_CLASS_PREFIXES):
        return f"not an image (SOP class {shown(sop_class)}, modality {shown(modality) or '?'})"
    return None


class DicomSeriesError(ValueError):
    """A DICOM folder or series that cannot be read as one volume; the message names the file or folder."""


@dataclass(frozen=True)
class SkippedFile:
    """A file of a scanned folder that is not part of any image series, and why."""

    path: Path
    reason: str


@dataclass
class SeriesInfo:
    """One series found in a folder: its headers (no pixel data) in file-name order."""

    folder: Path
    series_uid: str
    study_uid: str
    modality: str
    description: str
    files: list[Path] = field(default_factory=list)
    headers: list[Dataset] = field(default_factory=list, repr=False)

    @property
    def num_instances(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        """One line without patient attributes, for messages."""
        return (
            f"{shown(self.series_uid)} ({shown(self.modality)}, '{shown(self.description)}', "
            f"{self.num_instances} files)"
        )


@dataclass
class DicomVolume:
    """A series as a volume: ``array[i, j, k]`` (column, row, slice), RAS ``affine``, sorted headers."""

    array: np.ndarray
    affine: np.ndarray
    datasets: list[Dataset]
    series_uid: str
    study_uid: str
    files: list[Path]

    def frames(self, volume_ijk: np.ndarray) -> np.ndarray:
        """``volume_ijk`` (shaped like ``array``) as ``(k, rows, columns)`` frames in ``datasets`` order."""
        volume = np.asarray(volume_ijk)
        if volume.shape != self.array.shape:
            raise ValueError(f"volume shape {volume.shape} differs from the series' {self.array.shape}")
        return np.ascontiguousarray(volume.transpose(2, 1, 0))

    def to_metatensor(self) -> MetaTensor:
        """A channel-less ``MetaTensor`` with the metadata ``LoadImage(image_only=True)`` gives a NIfTI."""
        import torch
        from monai.data import MetaTensor
        from monai.utils import SpaceKeys

        affine = torch.as_tensor(self.affine, dtype=torch.float64)
        meta = {
            "affine": affine,
            "original_affine": affine.clone(),
            "spatial_shape": np.asarray(self.array.shape),
            "space": SpaceKeys.RAS,
            "original_channel_dim": float("nan"),
            "filename_or_obj": str(self.files[0].parent) if self.files else "",
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
        }
        return MetaTensor(torch.as_tensor(self.array), meta=meta)

    def to_nifti(self, path: str | Path) -> Path:
        """Save as NIfTI (float32, this affine) so NIfTI transform chains and bundles read it unchanged."""
        import nibabel as nib

        path = Path(path)
        image = nib.Nifti1Image(self.array, self.affine)
        image.set_qform(self.affine, code=1)
        image.set_sform(self.affine, code=1)
        nib.save(image, path)
        return path


def _dcmread(path: Path, defer_size: int | None = None) -> Dataset:
    """``pydicom.dcmread``; a file without the 128-byte preamble and ``DICM`` is accepted when it
    parses to a dataset with a SOPClassUID (``force=True`` alone would accept any file)."""
    try:
        return pydicom.dcmread(path, defer_size=defer_size)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, defer_size=defer_size, force=True)
        if "SOPClassUID" not in ds:
            raise
        return ds


def _read_header(path: Path) -> tuple[Dataset, bool]:
    """The header of ``path`` without pixel data, and whether the file has pixel data.

    Large values are deferred (seeked over, not read), so the pixel data is never loaded.
    """
    ds = _dcmread(path, defer_size=1024)
    has_pixels = any(tag in ds for tag in PIXEL_TAGS)
    for tag in PIXEL_TAGS:
        if tag in ds:
            delattr(ds, tag)
    return ds, has_pixels


def _files_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DicomSeriesError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _skip(skipped: list[SkippedFile] | None, path: Path, reason: str) -> None:
    logger.warning("skipping %s: %s", path, reason)
    if skipped is not None:
        skipped.append(SkippedFile(path, reason))


def find_series(folder: str | Path, skipped: list[SkippedFile] | None = None) -> list[SeriesInfo]:
    """The image series in ``folder`` (searched recursively), largest first; headers only.

    Files that are not DICOM, DICOM objects that are not images (SEG, SR, PR, KO, ...: our own SEG
    among them), and DICOM without pixel data or SeriesInstanceUID are skipped: each is logged and,
    when ``skipped`` is given, appended to it. NIfTI files (``.nii``, ``.nii.gz``: masks) and unfinished
    atomic writes (``.partial-*``) are skipped unread, logged at debug level only.
    """
    folder = Path(folder)
    found: dict[str, SeriesInfo] = {}
    for path in _files_under(folder):
        if path.name.startswith(PARTIAL_PREFIX) or path.name.lower().endswith(NIFTI_SUFFIXES):
            logger.debug("skipping %s: a NIfTI file or an unfinished write, not DICOM", path)
            continue
        try:
            ds, has_pixels = _read_header(path)
        except Exception as error:  # any unreadable file is skipped or reported, never a crash
            _skip(skipped, path, f"not a readable DICOM file ({type(error).__name__})")
            continue
        reason = not_an_image(ds)
        if reason is not None:
            _skip(skipped, path, reason)
            continue
        if not has_pixels:
            _skip(skipped, path, f"DICOM without pixel data (SOP class {ds.get('SOPClassUID', '?')})")
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            _skip(skipped, path, "DICOM without SeriesInstanceUID")
            continue
        if uid not in found:
            found[uid] = SeriesInfo(
                folder,
                uid,
                str(ds.get("StudyInstanceUID", "")),
                str(ds.get("Modality", "")),
                str(ds.get("SeriesDescription", "")),
            )
        found[uid].files.append(path)
        found[uid].headers.append(ds)
    return sorted(found.values(), key=lambda s: -s.num_instances)


def select_series(
    series: Sequence[SeriesInfo],
    series_uid: str | None = None,
    modality: str | None = None,
    description: str | None = None,
    rule: str = "largest",
) -> SeriesInfo:
    """The one series matching every given condition (``description`` is a regex, searched).

    ``rule`` decides between several matches: ``"largest"`` takes the one with most instances (an
    error when two tie), ``"only"`` makes several matches an error.
    """
    if rule not in ("largest", "only"):
        raise ValueError(f"rule must be 'largest' or 'only', not {rule!r}")
    folder = series[0].folder if series else "(no series)"
    matches = [
        s
        for s in series
        if (series_uid is None or s.series_uid == series_uid)
        and (modality is None or s.modality.upper() == modality.upper())
        and (description is None or re.search(description, s.description) is not None)
    ]
    wanted = f"series_uid={series_uid}, modality={modality}, description={description!r}"
    available = "; ".join(s.summary() for s in series) or "none"
    if not matches:
        raise DicomSeriesError(f"{folder}: no image series matches {wanted}; found: {available}")
    matches.sort(key=lambda s: -s.num_instances)
    ambiguous = len(matches) > 1 and (rule == "only" or matches[0].num_instances == matches[1].num_instances)
    if ambiguous:
        listed = "; ".join(s.summary() for s in matches)
        raise DicomSeriesError(f"{folder}: {len(matches)} series match {wanted} ambiguously: {listed}")
    return matches[0]


def _vector(ds: Dataset, name: str, path: Path) -> np.ndarray:
    value = ds.get(name)
    if value is None or len(value) == 0:
        raise DicomSeriesError(f"{path}: missing {name}")
    return np.asarray([float(v) for v in value], dtype=np.float64)


@dataclass(frozen=True)
class _Slice:
    path: Path
    header: Dataset
    position: np.ndarray  # ImagePositionPatient, LPS mm
    distance: float  # position along the slice normal


def _check_same_geometry(slices: list[_Slice]) -> tuple[np.ndarray, np.ndarray]:
    """The shared orientation (6 cosines) and pixel spacing; an error naming a file that differs."""
    first = slices[0]
    orientation = _vector(first.header, "ImageOrientationPatient", first.path)
    spacing = _vector(first.header, "PixelSpacing", first.path)
    size = (int(first.header.Rows), int(first.header.Columns))
    for s in slices[1:]:
        if not np.allclose(
            _vector(s.header, "ImageOrientationPatient", s.path), orientation, atol=ORIENTATION_TOLERANCE
        ):
            raise DicomSeriesError(f"{s.path}: ImageOrientationPatient differs from {first.path}")
        if (int(s.header.Rows), int(s.header.Columns)) != size:
            raise DicomSeriesError(f"{s.path}: Rows x Columns differ from {first.path}")
        if not np.allclose(_vector(s.header, "PixelSpacing", s.path), spacing, rtol=1e-4, atol=1e-6):
            raise DicomSeriesError(f"{s.path}: PixelSpacing differs from {first.path}")
    return orientation, spacing


def _slice_step(slices: list[_Slice], normal: np.ndarray) -> np.ndarray:
    """The LPS step from one sorted slice to the next; errors for duplicates, gaps and uneven steps."""
    if len(slices) == 1:
        header = slices[0].header
        thickness = float(header.get("SpacingBetweenSlices") or header.get("SliceThickness") or 1.0)
        return normal * thickness
    gaps = np.diff([s.distance for s in slices])
    spacing = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE * spacing, POSITION_TOLERANCE_MM)
    for gap, before, after in zip(gaps, slices, slices[1:], strict=False):
        if gap < tolerance:
            raise DicomSeriesError(f"{after.path}: duplicated slice position (same as {before.path})")
    for gap, before, after in zip(gaps, slices, slices[1:], strict=False):
        if abs(gap - spacing) <= tolerance:
            continue
        missing = gap / spacing - 1
        if round(missing) >= 1 and abs(missing - round(missing)) <= 0.05:
            raise DicomSeriesError(
                f"{before.path.parent}: {round(missing)} slice(s) missing between {before.path.name} "
                f"and {after.path.name} (gap {gap:.4g} mm, spacing {spacing:.4g} mm)"
            )
        raise DicomSeriesError(
            f"{before.path.parent}: unevenly spaced slices, {gap:.4g} mm between {before.path.name} "
            f"and {after.path.name} but {spacing:.4g} mm elsewhere"
        )
    step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    for k, s in enumerate(slices):
        if np.linalg.norm(s.position - (slices[0].position + k * step)) > tolerance:
            raise DicomSeriesError(f"{s.path}: ImagePositionPatient is off the line through the other slices")
    return step


def _sorted_slices(paths: Sequence[Path], headers: Sequence[Dataset]) -> tuple[list[_Slice], np.ndarray]:
    """Slices sorted along the normal, and the LPS affine of the series (checked for a regular grid)."""
    for path, header in zip(paths, headers, strict=True):
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomSeriesError(f"{path}: multi-frame images are not supported (one frame per file)")
        for name in GEOMETRY_TAGS:
            if name not in header:
                raise DicomSeriesError(f"{path}: missing {name}")
    orientation = _vector(headers[0], "ImageOrientationPatient", paths[0])
    if orientation.size != 6:
        raise DicomSeriesError(f"{paths[0]}: ImageOrientationPatient must have 6 values")
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    slices = []
    for path, header in zip(paths, headers, strict=True):
        position = _vector(header, "ImagePositionPatient", path)
        if position.size != 3:
            raise DicomSeriesError(f"{path}: ImagePositionPatient must have 3 values")
        slices.append(_Slice(path, header, position, float(position @ normal)))
    slices.sort(key=lambda s: s.distance)
    _, pixel_spacing = _check_same_geometry(slices)
    step = _slice_step(slices, normal)
    affine = np.eye(4)
    affine[:3, 0] = row_cosine * pixel_spacing[1]  # i: along a row, one column apart
    affine[:3, 1] = column_cosine * pixel_spacing[0]  # j: down a column, one row apart
    affine[:3, 2] = step
    affine[:3, 3] = slices[0].position
    return slices, affine


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _frame_values(path: Path) -> tuple[np.ndarray, Dataset]:
    """The modality-LUT values of one file's frame, ``(rows, columns)`` float32, and its header."""
    ds = _dcmread(path)
    if not any(tag in ds for tag in PIXEL_TAGS):
        raise DicomSeriesError(f"{path}: no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomSeriesError(f"{path}: {ds.SamplesPerPixel} samples per pixel, only greyscale is supported")
    try:
        stored = ds.pixel_array.astype(np.float64)
    except Exception as error:  # a decoder error names the transfer syntax, never the patient
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise DicomSeriesError(f"{path}: cannot decode the pixel data ({reason})") from None
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        low, high = _stored_range(ds)
        stored = (low + high) - stored
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    for tag in PIXEL_TAGS:
        if tag in ds:
            delattr(ds, tag)
    return (stored * slope + intercept).astype(np.float32), ds


def _series_files(
    source: str | Path | Sequence[str | Path],
    series_uid: str | None,
    modality: str | None,
    description: str | None,
    rule: str,
) -> SeriesInfo:
    if isinstance(source, (str, Path)):
        skipped: list[SkippedFile] = []
        series = find_series(source, skipped)
        if not series:
            first = (
                f" ({len(skipped)} skipped, first {shown(skipped[0].path.name)}: {skipped[0].reason})"
                if skipped
                else ""
            )
            raise DicomSeriesError(f"{source}: no DICOM image series found{first}")
        return select_series(series, series_uid, modality, description, rule)
    paths = [Path(p) for p in source]
    if not paths:
        raise DicomSeriesError("no files given")
    headers = []
    for path in paths:
        try:
            header, has_pixels = _read_header(path)
        except Exception as error:  # any unreadable file is skipped or reported, never a crash
            raise DicomSeriesError(f"{path}: not a readable DICOM file ({type(error).__name__})") from None
        if not has_pixels:
            raise DicomSeriesError(f"{path}: no pixel data")
        headers.append(header)
    uids = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(uids) > 1:
        raise DicomSeriesError(f"{paths[0].parent}: the files belong to {len(uids)} series: {sorted(uids)}")
    info = SeriesInfo(
        paths[0].parent,
        uids.pop(),
        str(headers[0].get("StudyInstanceUID", "")),
        str(headers[0].get("Modality", "")),
        str(headers[0].get("SeriesDescription", "")),
        paths,
        headers,
    )
    return select_series([info], series_uid, modality, description, rule)


def read_series(
    folder_or_files: str | Path | Sequence[str | Path],
    series_uid: str | None = None,
    modality: str | None = None,
    description: str | None = None,
    rule: str = "largest",
) -> DicomVolume:
    """Read one series of ``folder_or_files`` (a folder, or the files of one series) as a ``DicomVolume``.

    In a folder the series is chosen by ``select_series`` with the given conditions. Slices are
    ordered by position along the slice normal; missing, duplicated or unevenly spaced slices,
    differing orientations / sizes and missing geometry are errors naming the file or folder.
    """
    return read_series_info(_series_files(folder_or_files, series_uid, modality, description, rule))


def read_series_info(info: SeriesInfo) -> DicomVolume:
    """The series ``info`` (as :func:`find_series` found it) as a ``DicomVolume``, checked as by
    :func:`read_series`."""
    slices, affine_lps = _sorted_slices(info.files, info.headers)
    frames, datasets = [], []
    for s in slices:
        values, ds = _frame_values(s.path)
        frames.append(values)
        datasets.append(ds)
    array = np.ascontiguousarray(np.stack(frames).transpose(2, 1, 0))
    logger.info("read series %s: %d slices, shape %s", shown(info.series_uid), len(slices), array.shape)
    return DicomVolume(
        array=array,
        affine=LPS_TO_RAS @ affine_lps,
        datasets=datasets,
        series_uid=info.series_uid,
        study_uid=info.study_uid,
        files=[s.path for s in slices],
    )
