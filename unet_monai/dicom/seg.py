"""Label volumes as DICOM Segmentation (SEG) instances with highdicom, and back.

Frame-order convention: ``frames[k]`` (shape ``(Rows, Columns)``) is the label image of
``source_datasets[k]``; ``read_seg`` returns its frames in that same order. Inside the written file,
highdicom orders frames by segment, then by position along the slice normal, each frame referencing
its source SOP instance; nobody reading through ``read_seg`` needs that order.

Classes come from a bundle's ``configs/metadata.json``: ``network_data_format.outputs.pred.channel_def``
(``{"0": "background", "1": "anterior", ...}``); class ``k >= 1`` becomes segment ``k`` (a single
sigmoid channel ``{"0": "FLAIR abnormality"}`` is foreground class 1). The metadata
may carry SNOMED CT codes per class under ``dicom_seg``::

    "dicom_seg": {"1": {"category": ["91723000", "SCT", "Anatomical Structure"],
                        "type": ["10200004", "SCT", "Liver"]}}

Empty classes: every class of the metadata is always described as a segment, so segment numbers equal
class numbers. With ``omit_empty_frames=True`` (the default) a BINARY SEG stores no frame for a class
with no voxels (highdicom allows a described segment without frames; ``read_seg`` gives it zeros), and
no frame for a source instance without foreground. An all-empty mask cannot omit every frame: it is
written with all frames present and empty. LABELMAP stores one frame per source instance holding all
classes, so an empty class is just a value that does not occur.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from unet_monai.io import atomic_output

logger = logging.getLogger(__name__)

# SNOMED CT "Tissue" (85756007; the legacy SRT code was T-D0050) for both category and type.
DEFAULT_CATEGORY = codes.SCT.Tissue
DEFAULT_TYPE = codes.SCT.Tissue
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence
SEG_TYPES = ("binary", "labelmap")
DCIODVFY = "dciodvfy"


def _software_version() -> str:
    try:
        return version("unet-monai")
    except PackageNotFoundError:
        return "unknown"


def _segment_label(name: str) -> str:
    """A channel_def name as a Segment Label: a trailing "(remark)" dropped, at most 64 characters."""
    return re.sub(r"\s*\([^()]*\)$", "", str(name)).strip()[:64] or str(name)[:64]


def foreground_classes(metadata: dict) -> dict[int, str]:
    """Class number -> segment label for the foreground classes of the metadata's ``pred`` channel_def.

    Classes 1..N of a softmax channel_def (class 0, the background, skipped); a single-channel (sigmoid)
    channel_def ``{"0": name}`` is one foreground class, number 1.
    """
    try:
        channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    except (KeyError, TypeError) as error:
        raise ValueError(
            "metadata has no network_data_format.outputs.pred.channel_def naming the classes"
        ) from error
    if set(channel_def) == {"0"}:
        return {1: _segment_label(channel_def["0"])}
    classes = {int(key): _segment_label(name) for key, name in channel_def.items() if int(key) != 0}
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise ValueError(f"channel_def classes must be 0..N without gaps, got {sorted(channel_def)}")
    return classes


def _coded_concept(
    value: Sequence[str] | None, default: pydicom.sr.coding.Code, what: str
) -> hd.sr.CodedConcept:
    """A CodedConcept from ``[code, scheme, meaning]``, or ``default`` when ``value`` is None."""
    if value is None:
        return hd.sr.CodedConcept(default.value, default.scheme_designator, default.meaning)
    if len(value) != 3 or not all(isinstance(part, str) and part for part in value):
        raise ValueError(f"{what} code must be [code, scheme, meaning] strings, got {value!r}")
    return hd.sr.CodedConcept(value[0], value[1], value[2])


def segment_descriptions(metadata: dict, mapping: dict | None = None) -> list[hd.seg.SegmentDescription]:
    """One AUTOMATIC segment per foreground class of the bundle metadata, segment number = class number.

    ``mapping`` (default: the metadata's ``dicom_seg``) maps a class number (string key, as in
    channel_def) to ``{"category": [code, scheme, meaning], "type": [...]}``; a missing class or
    key falls back to SNOMED CT "Tissue" (85756007).
    """
    classes = foreground_classes(metadata)
    if mapping is None:
        mapping = metadata.get("dicom_seg", {})
    algorithm = hd.AlgorithmIdentificationSequence(
        name=str(metadata.get("name", "unet-monai")),
        family=ALGORITHM_FAMILY,
        version=str(metadata.get("version", "unknown")),
    )
    descriptions = []
    for number, label in classes.items():
        class_codes = mapping.get(str(number), {})
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=_coded_concept(
                    class_codes.get("category"), DEFAULT_CATEGORY, f"class {number} category"
                ),
                segmented_property_type=_coded_concept(
                    class_codes.get("type"), DEFAULT_TYPE, f"class {number} type"
                ),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    return descriptions


def _check_sources(source_datasets: Sequence[pydicom.Dataset]) -> None:
    """Non-empty, distinct SOP instances (messages name indices and UIDs, never patient data)."""
    if len(source_datasets) == 0:
        raise ValueError("source_datasets is empty: a SEG needs its source instances")
    uids = [str(ds.SOPInstanceUID) for ds in source_datasets]
    if len(set(uids)) != len(uids):
        raise ValueError("source_datasets contain the same SOPInstanceUID more than once")


def _check_frames(
    frames: np.ndarray, source_datasets: Sequence[pydicom.Dataset], num_classes: int
) -> np.ndarray:
    """The label frames as an unsigned integer array, after checking shape, NaN and label values."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be 3D (instances, rows, columns), got shape {frames.shape}")
    if frames.shape[0] != len(source_datasets):
        raise ValueError(
            f"frames has {frames.shape[0]} frames but there are {len(source_datasets)} source instances"
        )
    for index, ds in enumerate(source_datasets):
        if (int(ds.Rows), int(ds.Columns)) != frames.shape[1:]:
            raise ValueError(
                f"frames are {frames.shape[1]}x{frames.shape[2]} (rows x columns) but source instance "
                f"{index} is {ds.Rows}x{ds.Columns}"
            )
    if frames.dtype.kind == "b":
        return frames.astype(np.uint8)
    if frames.dtype.kind == "f":
        if np.isnan(frames).any():
            raise ValueError("frames contain NaN: expected integer class labels")
        if not np.array_equal(frames, np.round(frames)):
            raise ValueError("frames contain non-integer values: expected integer class labels")
    elif frames.dtype.kind not in "iu":
        raise ValueError(f"frames must hold integer class labels, got dtype {frames.dtype}")
    labels = np.unique(frames)
    outside = labels[(labels < 0) | (labels > num_classes)]
    if outside.size:
        raise ValueError(
            f"frames contain labels {outside[:10].tolist()} outside the classes 0..{num_classes} "
            "of the metadata"
        )
    return frames.astype(np.uint8 if num_classes < 256 else np.uint16)


def _check_dicom_file(path: Path) -> None:
    """Refuse a written DICOM file that does not parse back to its pixel data (a truncated file fails)."""
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:
        raise ValueError(
            f"the written DICOM file does not re-open ({type(error).__name__}: {error})"
        ) from None
    if "PixelData" not in dataset:
        raise ValueError("the written DICOM file has no pixel data")


def _save_atomically(dataset: pydicom.Dataset, path: Path) -> None:
    """Write through ``unet_monai.io.atomic_output`` (temporary file, fsync, re-read, rename): no
    half-written file on error; a full disk raises ``OutputError`` naming ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, verify=_check_dicom_file) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)


def write_seg(
    frames: np.ndarray,
    source_datasets: Sequence[pydicom.Dataset],
    metadata: dict,
    path: str | os.PathLike,
    seg_type: str = "binary",
    *,
    mapping: dict | None = None,
    omit_empty_frames: bool = True,
    series_number: int = 300,
    series_description: str = "unet-monai segmentation",
) -> Path:
    """Write label ``frames`` (one per source instance, same order) as a DICOM SEG; the path written.

    ``source_datasets`` are the source single-frame instances (pixel data not needed); the SEG copies
    their patient / study modules and references exactly these SOP instances.

    ``seg_type`` is "binary" (one 1-bit frame per non-empty segment and instance) or "labelmap"
    (one frame per instance holding the class numbers). Classes 1..N of the metadata become segments
    1..N. ``omit_empty_frames``: see the module docstring. Raises ValueError (one line) on bad input.
    """
    if seg_type not in SEG_TYPES:
        raise ValueError(f"seg_type must be one of {SEG_TYPES}, got {seg_type!r}")
    descriptions = segment_descriptions(metadata, mapping)
    _check_sources(source_datasets)
    labels = _check_frames(frames, source_datasets, len(descriptions))
    if not labels.any():
        # highdicom cannot omit every frame; say so here rather than through its warning.
        logger.info("all-empty mask: writing every frame (empty)")
        omit_empty_frames = False
    with warnings.catch_warnings():
        # highdicom's warning about a single-component PatientName quotes the name: keep it out of logs.
        warnings.filterwarnings(
            "ignore", message=r"The string .* is unlikely to represent", category=UserWarning
        )
        seg = _build_seg(
            labels, source_datasets, descriptions, metadata, seg_type, omit_empty_frames, series_number
        )
    seg.SeriesDescription = series_description
    path = Path(path)
    _save_atomically(seg, path)
    logger.info(
        "wrote %s SEG %s: %d segments, %d frames", seg_type, path.name, len(descriptions), seg.NumberOfFrames
    )
    return path


def _content_description(metadata: dict) -> str:
    """Bundle name and version, at most 64 characters (VR LO)."""
    return f"{metadata.get('name', 'unet-monai')} {metadata.get('version', '')}".strip()[:64]


# Type 2 attributes of the Patient and General Study modules that the SEG copies from its sources: they
# must be present, but may be empty. Real series omit some (e.g. PatientBirthDate, PatientSex).
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _with_type2_attributes(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` itself when it has every attribute of ``TYPE2_COPIED``, else a shallow copy with the missing
    ones added empty (the caller's dataset is left as it is)."""
    missing = [keyword for keyword in TYPE2_COPIED if keyword not in ds]
    if not missing:
        return ds
    completed = pydicom.Dataset()
    completed.update(ds)  # a new element dictionary: adding to it leaves ``ds`` untouched
    if hasattr(ds, "file_meta"):
        completed.file_meta = ds.file_meta
    for keyword in missing:
        setattr(completed, keyword, "")
    return completed


def _build_seg(
    labels: np.ndarray,
    source_datasets: Sequence[pydicom.Dataset],
    descriptions: list[hd.seg.SegmentDescription],
    metadata: dict,
    seg_type: str,
    omit_empty_frames: bool,
    series_number: int,
) -> hd.seg.Segmentation:
    """The highdicom Segmentation (in memory) of checked ``labels``."""
    # An empty SpecificCharacterSet (seen in real CT files) means the default repertoire, which highdicom
    # rejects as a value: pass None then, so that the SEG carries no SpecificCharacterSet either.
    character_set = source_datasets[0].get("SpecificCharacterSet") or None
    return hd.seg.Segmentation(
        source_images=[_with_type2_attributes(ds) for ds in source_datasets],
        pixel_array=labels,
        segmentation_type=seg_type.upper(),
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="unet-monai",
        manufacturer_model_name=str(metadata.get("name", "unet-monai"))[:64],
        software_versions=_software_version(),
        device_serial_number="0",
        content_label="SEGMENTATION",
        content_description=_content_description(metadata),
        omit_empty_frames=omit_empty_frames,
        specific_character_set=character_set,
    )


def _frame_group(seg: pydicom.Dataset, frame: pydicom.Dataset, name: str) -> pydicom.Dataset | None:
    """Item of functional group ``name`` for one frame: its own, else the shared one."""
    for group in (frame, seg.SharedFunctionalGroupsSequence[0]):
        if name in group:
            return group[name].value[0]
    return None


def _frame_sources(frame: pydicom.Dataset) -> list[str]:
    """SOP instance UIDs a frame says it was derived from."""
    return [
        str(source.ReferencedSOPInstanceUID)
        for derivation in frame.get("DerivationImageSequence", [])
        for source in derivation.get("SourceImageSequence", [])
    ]


def _check_geometry(seg: pydicom.Dataset, sources: dict[str, pydicom.Dataset], tolerance_mm: float) -> None:
    """Each frame lies on the pixel grid of every source instance it references (position, orientation,
    spacing, size): what highdicom's ``SpatialLocationsPreserved`` would state, checked instead of trusted
    (3D Slicer, for one, leaves that attribute out)."""
    for number, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, 1):
        position = _frame_group(seg, frame, "PlanePositionSequence")
        orientation = _frame_group(seg, frame, "PlaneOrientationSequence")
        measures = _frame_group(seg, frame, "PixelMeasuresSequence")
        for uid in _frame_sources(frame):
            ds = sources.get(uid)
            if ds is None:
                continue
            same = (
                position is not None
                and orientation is not None
                and measures is not None
                and (int(seg.Rows), int(seg.Columns)) == (int(ds.Rows), int(ds.Columns))
                and np.allclose(position.ImagePositionPatient, ds.ImagePositionPatient, atol=tolerance_mm)
                and np.allclose(orientation.ImageOrientationPatient, ds.ImageOrientationPatient, atol=1e-4)
                and np.allclose(measures.PixelSpacing, ds.PixelSpacing, atol=1e-4)
            )
            if not same:
                raise ValueError(f"SEG frame {number} does not lie on the pixel grid of its source instance")


def read_seg(
    path: str | os.PathLike, source_datasets: Sequence[pydicom.Dataset], tolerance_mm: float = 0.01
) -> np.ndarray:
    """The label frames of a SEG, shape (len(source_datasets), Rows, Columns), in the sources' order.

    Segment numbers become label values; an instance or segment without frames reads as zeros. Every
    source instance must be referenced by the SEG, and every frame must lie on the pixel grid of the
    source instances it references (checked to ``tolerance_mm``).
    """
    _check_sources(source_datasets)
    seg = hd.seg.segread(path)
    referenced = {
        str(instance.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for instance in series.ReferencedInstanceSequence
    }
    uids = [str(ds.SOPInstanceUID) for ds in source_datasets]
    missing = [index for index, uid in enumerate(uids) if uid not in referenced]
    if missing:
        raise ValueError(f"the SEG does not reference source instances at indices {missing}")
    _check_geometry(seg, dict(zip(uids, source_datasets, strict=True)), tolerance_mm)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        combine_segments=True,
        relabel=False,
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=True,  # checked by _check_geometry
    )
    return np.asarray(pixels)


def _redact_patient_values(line: str) -> str:
    """Hide the value dciodvfy prints for Patient module attributes (group 0010: name, ID, ...)."""
    if "(0x0010," in line or "Patient" in line:
        return re.sub(r"=\s*<[^>]*>", "= <redacted>", line)
    return line


def dciodvfy_messages(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``dciodvfy`` of a file: its (error lines, warning lines), patient values redacted."""
    executable = shutil.which(DCIODVFY)
    if executable is None:
        raise FileNotFoundError("dciodvfy not found (Debian package dicom3tools)")
    result = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=120)
    lines = [_redact_patient_values(line.strip()) for line in (result.stdout + result.stderr).splitlines()]
    errors = [line for line in lines if line.startswith("Error")]
    warning_lines = [line for line in lines if line.startswith("Warning")]
    return errors, warning_lines


def validate_with_dciodvfy(path: str | os.PathLike) -> list[str]:
    """The "Error - ..." lines ``dciodvfy`` reports for a DICOM file (empty when it finds none)."""
    return dciodvfy_messages(path)[0]
