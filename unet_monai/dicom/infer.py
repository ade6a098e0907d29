"""Segment a DICOM series with a volume bundle: DICOM in, DICOM SEG and / or NIfTI mask out.

:func:`segment_dicom` reads one series of a folder (``read_series``), hands it to the bundle's
``inference`` workflow as a NIfTI on the series' own grid, checks that the mask came back on that grid
and writes it as ``<output>/<SeriesInstanceUID>_seg.dcm`` (DICOM SEG referencing the source instances)
and / or ``<output>/<SeriesInstanceUID>_seg.nii.gz``. :func:`segment_pacs_study` does the same for a
series of a study on a PACS: pull by WADO-RS, segment, store the SEG back by STOW-RS or C-STORE.

The UID comes from the files, so it is untrusted: output names use it made safe
(:func:`unet_monai.io.safe_name`: ``/``, ``..``, NUL, unicode and length cannot lead out of the output
folder), and a SEG is written only for UIDs that are DICOM UIDs (digits and dots, at most 64
characters). Outputs are written atomically (:mod:`unet_monai.io`).

Errors are one line naming the folder, file, UID or server; logs name files and UIDs, never patient
attributes.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from unet_monai.dicom.selection import (
    Criteria,
    SelectionRules,
    accepted_modalities,
    check_description,
    choose_series,
    load_rules,
)
from unet_monai.dicom.series import (
    NOT_DICOM_SUFFIXES,
    NOT_IMAGE_MODALITIES,
    PIXEL_TAGS,
    DicomSeriesError,
    DicomVolume,
    read_series_info,
    shown,
)
from unet_monai.io import PARTIAL_PREFIX, atomic_output, output_path, safe_name, trained_weights

logger = logging.getLogger(__name__)

FORMATS = ("seg", "nifti")
SEG_TYPES = ("binary", "labelmap")
__all__ = ["NOT_DICOM_SUFFIXES", "NOT_IMAGE_MODALITIES", "segment_dicom", "segment_pacs_study"]
# The mask the bundle writes must lie on the series' grid within this (mm; NIfTI stores float32 affines).
AFFINE_TOLERANCE_MM = 1e-3
# What a SEG may copy from its sources: a DICOM UID (digits and dots, at most 64 characters).
DICOM_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _is_dicom_image(path: Path) -> bool:
    """Whether ``path`` parses as DICOM (with or without preamble) and holds pixel data."""
    try:
        try:
            ds = pydicom.dcmread(path, defer_size=1024)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, defer_size=1024, force=True)
            if "SOPClassUID" not in ds:
                return False
    except Exception:  # any unreadable file is simply not a DICOM image
        return False
    return any(tag in ds for tag in PIXEL_TAGS)


def holds_dicom_images(folder: str | Path) -> bool:
    """Whether ``folder`` (searched recursively) holds at least one DICOM file with pixel data.

    A DICOM SEG counts too: such a folder is read as DICOM, where a SEG is skipped by name (and a folder of
    SEGs only is an error), never handed to a bundle's image reader as if it were an image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(PARTIAL_PREFIX) or path.name.lower().endswith(NOT_DICOM_SUFFIXES):
            continue
        if path.is_file() and _is_dicom_image(path):
            return True
    return False


def bundle_metadata(bundle: str | Path) -> dict:
    """The bundle's ``configs/metadata.json``."""
    path = Path(bundle) / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundle {bundle} has no metadata.json")
    return json.loads(path.read_text())


def _check_formats(formats: Sequence[str], seg_type: str) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    chosen = tuple(dict.fromkeys(formats))
    if not chosen or any(f not in FORMATS for f in chosen):
        raise ValueError(f"formats must be some of {FORMATS}, got {tuple(formats)}")
    if seg_type not in SEG_TYPES:
        raise ValueError(f"seg_type must be one of {SEG_TYPES}, got {seg_type!r}")
    return chosen


def run_bundle_on_volume(
    bundle: str | Path, volume: DicomVolume, work: Path, checkpoint: Path, overrides: dict | None = None
) -> np.ndarray:
    """The bundle's mask of ``volume`` as an integer array ``[i, j, k]`` on the volume's grid.

    The volume goes to the ``inference`` workflow as ``work/in/image.nii.gz``; the one NIfTI the
    workflow writes to ``work/out`` must have the volume's shape and affine (a one-line error otherwise).
    """
    import nibabel as nib

    from unet_monai.bundle import run_workflow

    bundle = Path(bundle)
    folder_in, folder_out = work / "in", work / "out"
    folder_in.mkdir(parents=True)
    image = volume.to_nifti(folder_in / "image.nii.gz")
    settings = dict(overrides or {})
    settings.update(
        datalist=[str(image)],
        dataset_dir=str(folder_in),
        output_dir=str(folder_out),
        ckpt_path=str(checkpoint),
    )
    run_workflow(bundle, "inference", **settings)
    written = sorted(folder_out.glob("*.nii*")) if folder_out.is_dir() else []
    if len(written) != 1:
        raise ValueError(
            f"bundle {bundle} wrote {len(written)} NIfTI masks for series {shown(volume.series_uid)}"
        )
    mask = nib.load(written[0])
    data = np.asarray(mask.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != volume.array.shape:
        raise ValueError(
            f"bundle {bundle} wrote a mask of shape {data.shape} for series {shown(volume.series_uid)} "
            f"of shape {volume.array.shape}"
        )
    if not np.allclose(mask.affine, volume.affine, atol=AFFINE_TOLERANCE_MM):
        raise ValueError(
            f"bundle {bundle} wrote a mask with affine {np.round(mask.affine, 4).tolist()} for series "
            f"{shown(volume.series_uid)} with affine {np.round(volume.affine, 4).tolist()}"
        )
    if not np.array_equal(data, np.rint(data)) or data.min() < 0:
        raise ValueError(
            f"bundle {bundle} wrote a mask of non-label values for series {shown(volume.series_uid)}"
        )
    return data.astype(np.uint16 if data.max() > 255 else np.uint8)


def _save_mask_nifti(mask: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(mask, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _check_uids_for_seg(volume: DicomVolume, folder: str | Path) -> None:
    """A SEG copies its sources' UIDs: each must be a DICOM UID, or the SEG is refused in one line."""
    for path, dataset in zip(volume.files, volume.datasets, strict=True):
        for keyword in UID_KEYWORDS:
            value = dataset.get(keyword)
            if value is None and keyword == "FrameOfReferenceUID":
                continue
            text = str(value if value is not None else "")
            if len(text) > 64 or not DICOM_UID.fullmatch(text):
                where = folder if keyword in ("StudyInstanceUID", "SeriesInstanceUID") else path
                raise DicomSeriesError(
                    f"{where}: {keyword} '{shown(text)}' is not a valid DICOM UID (digits and dots, at most "
                    "64 characters), so a DICOM SEG cannot reference it; --format nifti writes the mask"
                )


def _output_name(series_uid: str) -> str:
    """The name outputs of a series start with: its UID, made safe (logged when that changed it)."""
    name = safe_name(series_uid)
    if name != series_uid:
        logger.warning(
            "series UID '%s' is not a safe file name: its outputs are named %s_seg.*", shown(series_uid), name
        )
    return name


def _publish(staged: dict[str, tuple[Path, str]], output: Path) -> dict[str, Path]:
    """Copy each staged file into ``output`` under its name (checked to stay inside ``output``), each
    atomically (:func:`unet_monai.io.atomic_output`); on error the files already published are removed
    again, so nothing is half-written."""
    output.mkdir(parents=True, exist_ok=True)
    done: dict[str, Path] = {}
    try:
        for kind, (source, name) in staged.items():
            target = output_path(output, name)
            with atomic_output(target) as temporary:
                shutil.copyfile(source, temporary)
            done[kind] = target
    except BaseException:
        for path in done.values():
            path.unlink(missing_ok=True)
        raise
    return done


def segment_dicom(
    bundle: str | Path,
    input_folder: str | Path,
    output_folder: str | Path,
    formats: Sequence[str] = ("seg",),
    series_uid: str | None = None,
    modality: str | None = None,
    description: str | None = None,
    checkpoint: str | Path | None = None,
    overrides: dict | None = None,
    seg_type: str = "binary",
    rules: str | Path | SelectionRules | None = None,
) -> dict[str, Any]:
    """Segment one DICOM series of ``input_folder`` with ``bundle``'s inference workflow.

    The series is chosen by :func:`unet_monai.dicom.selection.choose_series`: the default rule (no
    localizers, derived objects, modalities the bundle's metadata does not name, or too few / non-parallel
    slices), then ``rules`` (a MONAI Deploy selection rules file or :class:`SelectionRules`), then
    ``series_uid`` / ``modality`` / ``description`` (a regex); none left is ``NoSeriesToSegment``, several
    an error listing them.
    Writes ``<output>/<SeriesInstanceUID>_seg.dcm`` (``"seg"`` in ``formats``; a DICOM SEG of
    ``seg_type`` with the classes and codes of the bundle's metadata) and / or
    ``<output>/<SeriesInstanceUID>_seg.nii.gz`` (``"nifti"``; the mask on the series' grid, as
    ``read_series`` orders it). Returns ``series_uid``, ``study_uid``, ``files`` ({format: path}),
    ``seg_sop_instance_uid`` / ``seg_series_uid`` (None without SEG) and ``labels`` (the label values
    present).
    """
    from unet_monai.dicom.seg import write_seg

    chosen = _check_formats(formats, seg_type)
    bundle = Path(bundle).resolve()
    overrides = dict(overrides or {})
    weights = trained_weights(bundle, checkpoint, overrides)
    metadata = bundle_metadata(bundle)
    if rules is not None and not isinstance(rules, SelectionRules):
        rules = load_rules(rules)
    criteria = Criteria(rules, series_uid, modality, description, accepted_modalities(metadata))
    selection = choose_series(input_folder, criteria)
    volume = read_series_info(selection.series)
    if "seg" in chosen:
        _check_uids_for_seg(volume, input_folder)
    name = _output_name(volume.series_uid)
    logger.info(
        "segmenting series %s (%d slices) with %s", shown(volume.series_uid), len(volume.files), bundle.name
    )
    with tempfile.TemporaryDirectory(prefix="unet-monai-dicom-") as temporary:
        work = Path(temporary)
        mask = run_bundle_on_volume(bundle, volume, work, weights, overrides)
        staged: dict[str, tuple[Path, str]] = {}
        seg_uids: tuple[str | None, str | None] = (None, None)
        if "seg" in chosen:
            sources = [pydicom.dcmread(path) for path in volume.files]
            try:
                seg_path = write_seg(volume.frames(mask), sources, metadata, work / "seg.dcm", seg_type)
            except ValueError as error:
                raise ValueError(
                    f"{input_folder}: SEG of series {shown(volume.series_uid)}: {error}"
                ) from None
            header = pydicom.dcmread(seg_path, stop_before_pixels=True)
            seg_uids = (str(header.SOPInstanceUID), str(header.SeriesInstanceUID))
            staged["seg"] = (seg_path, f"{name}_seg.dcm")
        if "nifti" in chosen:
            _save_mask_nifti(mask, volume.affine, work / "mask.nii.gz")
            staged["nifti"] = (work / "mask.nii.gz", f"{name}_seg.nii.gz")
        files = _publish(staged, Path(output_folder))
    logger.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return {
        "series_uid": volume.series_uid,
        "study_uid": volume.study_uid,
        "files": files,
        "seg_sop_instance_uid": seg_uids[0],
        "seg_series_uid": seg_uids[1],
        "labels": np.unique(mask).tolist(),
        "selection": selection,
    }


def parse_node(text: str) -> tuple[str, int, str]:
    """``HOST:PORT:AET`` -> (host, port, AE title); ValueError (one line) when malformed."""
    parts = text.rsplit(":", 2)
    host, port, aet = parts if len(parts) == 3 else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or not aet or len(aet) > 16:
        raise ValueError(f"DICOM node {text!r} must be HOST:PORT:AET (AE title of at most 16 characters)")
    return host, int(port), aet


def _series_line(series: dict[str, Any]) -> str:
    """A series of a QIDO-RS answer on one line (its text escaped and cut: it comes from the server)."""
    return (
        f"{shown(series['SeriesInstanceUID'])} ({shown(series.get('Modality', '?'))}, "
        f"'{shown(series.get('SeriesDescription', ''))}', "
        f"{shown(series.get('NumberOfSeriesRelatedInstances', '?'))} instances)"
    )


def pacs_candidates(
    series: Sequence[dict[str, Any]],
    study_uid: str,
    url: str,
    series_uid: str | None = None,
    description: str | None = None,
) -> list[dict[str, Any]]:
    """The image series of a study's QIDO-RS answer that may be the one to segment (SEG, SR, ... left
    out), by ``series_uid`` and ``description`` (a regex) if given; a one-line ValueError listing the
    image series when none is left. Which of several to segment is decided on their pulled headers."""
    images = [s for s in series if str(s.get("Modality", "")).upper() not in NOT_IMAGE_MODALITIES]
    listed = "; ".join(_series_line(s) for s in images) or "none"
    matches = [
        s
        for s in images
        if (series_uid is None or s["SeriesInstanceUID"] == series_uid)
        and (description is None or re.search(description, str(s.get("SeriesDescription", ""))) is not None)
    ]
    if not matches:
        wanted = f"series {series_uid}" if series_uid else "image series"
        if description is not None:
            wanted += f" with a description matching {description!r}"
        raise ValueError(f"no {shown(wanted)} in study {shown(study_uid)} on {url}; image series: {listed}")
    return matches


def segment_pacs_study(
    url: str,
    study_uid: str,
    bundle: str | Path,
    *,
    modality: str | None = None,
    series_uid: str | None = None,
    description: str | None = None,
    rules: str | Path | SelectionRules | None = None,
    checkpoint: str | Path | None = None,
    overrides: dict | None = None,
    seg_type: str = "binary",
    c_store_node: str | None = None,
    work_dir: str | Path | None = None,
    timeout: float | None = None,
    connect_timeout: float | None = None,
) -> dict[str, Any]:
    """Pull one image series of a study from the DICOMweb server ``url``, segment it with
    :func:`segment_dicom` and store the SEG back: by STOW-RS, or by C-STORE to ``c_store_node``
    (``HOST:PORT:AET``) when given.

    The image series of the study (of ``modality``, ``series_uid``, ``description`` if given) are pulled
    and the one to segment is chosen on their headers as for a folder (:func:`segment_dicom`: the default
    rule, then ``rules``). The weights and the rules are checked before the PACS is asked anything.
    Pulled files go to ``<work>/pulled/<series UID made safe>/`` and the SEG to ``<work>/output/`` under
    ``work_dir`` (kept) or a temporary folder (removed). ``connect_timeout`` / ``timeout``: seconds to
    open a connection / that the PACS may stay silent, for every request (None:
    ``pacs.DEFAULT_CONNECT_TIMEOUT`` / ``pacs.DEFAULT_TIMEOUT``). Returns what :func:`segment_dicom`
    returns plus ``destination`` (where the SEG went) and ``seg`` (its path, meaningful with ``work_dir``).
    """
    from unet_monai.dicom.pacs import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, DicomWebPacs, c_store

    for option, uid in (("--study", study_uid), ("--series-uid", series_uid)):
        if uid is not None and (len(uid) > 64 or not DICOM_UID.fullmatch(uid)):
            raise ValueError(
                f"{option} '{shown(uid)}': not a DICOM UID (digits and dots, at most 64 characters)"
            )
    node = parse_node(c_store_node) if c_store_node else None
    resolved = Path(bundle).resolve()
    trained_weights(resolved, checkpoint, dict(overrides or {}))  # missing weights: before pulling anything
    if rules is not None and not isinstance(rules, SelectionRules):
        rules = load_rules(rules)
    check_description(description)
    limits = {
        "timeout": DEFAULT_TIMEOUT if timeout is None else timeout,
        "connect_timeout": DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
    }
    pacs = DicomWebPacs(url, **limits)
    found = pacs_candidates(
        pacs.find_series(study_uid, modality), study_uid, pacs.url, series_uid, description
    )
    with tempfile.TemporaryDirectory(prefix="unet-monai-pacs-") as temporary:
        work = Path(work_dir) if work_dir is not None else Path(temporary)
        for candidate in found:
            uid = candidate["SeriesInstanceUID"]
            pacs.pull_series(study_uid, uid, output_path(work / "pulled", safe_name(uid)))
        result = segment_dicom(
            bundle,
            work / "pulled",
            work / "output",
            formats=("seg",),
            series_uid=series_uid,
            modality=modality,
            description=description,
            rules=rules,
            checkpoint=checkpoint,
            overrides=overrides,
            seg_type=seg_type,
        )
        uid = result["series_uid"]
        seg_path = result["files"]["seg"]
        if node is None:
            stored = pacs.store([seg_path])
            destination = pacs.url
        else:
            stored = c_store([seg_path], *node, **limits)
            destination = stored.url
    if result["seg_sop_instance_uid"] not in stored.stored:
        raise ValueError(f"{destination} did not confirm storing SEG {result['seg_sop_instance_uid']}")
    logger.info("stored SEG %s of series %s on %s", result["seg_sop_instance_uid"], shown(uid), destination)
    return result | {"destination": destination, "seg": seg_path}
