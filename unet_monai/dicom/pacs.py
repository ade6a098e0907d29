"""PACS transport: DICOMweb (QIDO-RS / WADO-RS / STOW-RS) and DIMSE C-STORE.

:class:`DicomWebPacs` finds, pulls and stores instances over DICOMweb (``dicomweb-client``);
:func:`c_store` sends files or datasets to a DICOM node with ``pynetdicom``. Every failure is raised as a
:class:`PacsError` with a one-line message naming the server and the UID involved. Logs name files,
UIDs and counts only, never patient attributes.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from retrying import RetryError

__all__ = [
    "DEFAULT_STORAGE_SOP_CLASSES",
    "DicomWebPacs",
    "PacsError",
    "StoreResult",
    "c_store",
    "read_instances",
]

logger = logging.getLogger(__name__)

# WADO-RS: ask for the instances as stored (no transcoding by the server).
AS_STORED = (("application/dicom", "*"),)
# C-STORE warnings (coercion, elements discarded, dataset does not match SOP class) still mean "stored".
C_STORE_OK = {0x0000, 0xB000, 0xB006, 0xB007}
# What find_series returns of each series (never patient attributes).
SERIES_FIELDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
    "RetrieveURL",
)

DEFAULT_STORAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
)


class PacsError(RuntimeError):
    """A PACS request failed; the message is one line naming the server and the UID."""


@dataclass
class StoreResult:
    """What a store answered: the SOP Instance UIDs stored and those refused (with the reason)."""

    url: str
    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    response: Dataset | None = None  # the STOW-RS response dataset (None for C-STORE)


def read_instances(items: Iterable[Path | str | Dataset]) -> list[Dataset]:
    """Datasets from a mix of file paths and datasets (files are read whole)."""
    return [item if isinstance(item, Dataset) else pydicom.dcmread(item) for item in items]


def _write_atomically(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` as a DICOM file at ``path`` through a temporary file in the same folder."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            dataset.save_as(stream, enforce_file_format=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _series_summary(item: dict[str, Any]) -> dict[str, Any]:
    """The series-level attributes of a QIDO-RS result as ``{keyword: value}`` (no patient attributes)."""
    dataset = Dataset.from_json(item)
    summary: dict[str, Any] = {}
    for keyword in SERIES_FIELDS:
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        if keyword in ("SeriesNumber", "NumberOfSeriesRelatedInstances"):
            value = int(value)
        summary[keyword] = str(value) if isinstance(value, str) else value
    return summary


class DicomWebPacs:
    """A DICOMweb server (QIDO-RS, WADO-RS, STOW-RS) at ``url``, e.g. ``http://host:8042/dicom-web``."""

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        max_attempts: int = 3,
        headers: dict[str, str] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """``timeout`` in seconds per request; up to ``max_attempts`` tries per request (0.5 s, 1 s, ...
        between them) on connection errors and HTTP 408 / 429 / 503 / 504."""
        self.url = url.rstrip("/")
        self.client = DICOMwebClient(self.url, session=session, headers=headers, timeout=timeout)
        self.client.set_http_retry_params(
            retry=max_attempts > 1, max_attempts=max(1, max_attempts), wait_exponential_multiplier=250
        )

    @contextmanager
    def _errors(self, action: str, what: str) -> Iterator[None]:
        """Turn requests' exceptions into one-line PacsErrors naming the URL and ``what`` (the UIDs)."""
        try:
            try:
                yield
            except RetryError as retried:  # the last of several attempts answered a retriable HTTP error
                last = retried.last_attempt
                if last.has_exception:
                    raise last.value[1] from None
                response = last.value
                raise requests.exceptions.HTTPError(response=response) from None
        except requests.exceptions.HTTPError as error:
            response = error.response
            status = response.status_code if response is not None else "?"
            reason = response.reason if response is not None else str(error)
            if status == 404:
                raise PacsError(f"{what} not found on {self.url} ({action}: HTTP 404)") from None
            raise PacsError(f"{action} of {what} failed on {self.url}: HTTP {status} {reason}") from None
        except requests.exceptions.ConnectionError as error:
            cause = _short_reason(error)
            raise PacsError(
                f"cannot reach DICOMweb server {self.url} ({action} of {what}): {cause}"
            ) from None
        except requests.exceptions.Timeout:
            raise PacsError(f"DICOMweb server {self.url} timed out ({action} of {what})") from None
        except requests.exceptions.RequestException as error:
            raise PacsError(f"{action} of {what} failed on {self.url}: {_short_reason(error)}") from None
        except ValueError as error:  # dicomweb-client: an answer it cannot decode (media type, JSON, ...)
            reason = " ".join(str(error).split())[:200]
            raise PacsError(f"{action} of {what}: unexpected answer from {self.url}: {reason}") from None

    def find_series(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """QIDO-RS: the study's series (optionally one modality), each a dict of :data:`SERIES_FIELDS`.

        PacsError when the study has no series (unknown study) on the server.
        """
        filters = {"Modality": modality} if modality else None
        fields = list(SERIES_FIELDS[2:6])
        with self._errors("QIDO-RS series search", f"study {study_uid}"):
            found = self.client.search_for_series(
                study_instance_uid=study_uid, search_filters=filters, fields=fields, get_remaining=True
            )
        series = [_series_summary(item) for item in found or []]
        if not series:
            kind = f"no {modality} series" if modality else "no series"
            raise PacsError(f"{kind} in study {study_uid} on {self.url} (unknown study?)")
        logger.info("found %d series in study %s on %s", len(series), study_uid, self.url)
        return series

    def pull_series(self, study_uid: str, series_uid: str, folder: Path | str) -> list[Path]:
        """WADO-RS: write every instance of the series as ``folder/<SOPInstanceUID>.dcm`` (atomically).

        Instances come as stored on the server (no transcoding). Returns the files, sorted by name.
        """
        folder = Path(folder)
        paths: list[Path] = []
        with self._errors("WADO-RS retrieve", f"series {series_uid} of study {study_uid}"):
            for dataset in self.client.iter_series(study_uid, series_uid, media_types=AS_STORED):
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{dataset.SOPInstanceUID}.dcm"
                _write_atomically(dataset, path)
                paths.append(path)
        if not paths:
            raise PacsError(f"series {series_uid} of study {study_uid} on {self.url} has no instances")
        logger.info("pulled %d instances of series %s to %s", len(paths), series_uid, folder)
        return sorted(paths)

    def pull_study(
        self, study_uid: str, folder: Path | str, modality: str | None = None
    ) -> dict[str, list[Path]]:
        """Pull every series of the study (optionally one modality) to ``folder/<SeriesInstanceUID>/``.

        Returns ``{SeriesInstanceUID: files}``.
        """
        folder = Path(folder)
        pulled: dict[str, list[Path]] = {}
        for series in self.find_series(study_uid, modality):
            series_uid = series["SeriesInstanceUID"]
            pulled[series_uid] = self.pull_series(study_uid, series_uid, folder / series_uid)
        return pulled

    def store(self, items: Iterable[Path | str | Dataset]) -> StoreResult:
        """STOW-RS: store files and/or datasets; PacsError when the server refuses any of them."""
        datasets = read_instances(items)
        if not datasets:
            raise PacsError(f"nothing to store on {self.url}")
        studies = sorted({str(ds.StudyInstanceUID) for ds in datasets})
        what = f"{len(datasets)} instances of study {', '.join(studies)}"
        with self._errors("STOW-RS store", what):
            response = self.client.store_instances(datasets)
        result = StoreResult(url=self.url, response=response)
        for item in response.get("ReferencedSOPSequence", []):
            result.stored.append(str(item.ReferencedSOPInstanceUID))
        for item in response.get("FailedSOPSequence", []):
            reason = item.get("FailureReason", "?")
            result.failed[str(item.ReferencedSOPInstanceUID)] = f"failure reason 0x{int(reason):04X}"
        if result.failed:
            uid, reason = next(iter(result.failed.items()))
            raise PacsError(
                f"STOW-RS store on {self.url} refused {len(result.failed)} of {len(datasets)} instances "
                f"(first: {uid}, {reason})"
            )
        logger.info("stored %d instances on %s", len(result.stored), self.url)
        return result


def _short_reason(error: BaseException) -> str:
    """The gist of a requests error on one line, e.g. 'connection refused' or '[Errno -2] Name or ...'."""
    text = " ".join(str(error).split())
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        return "connection refused" if "Errno 111" in errno.group(0) else errno.group(0).strip()
    return text[:200] or type(error).__name__


class _Outgoing(NamedTuple):
    """One instance to C-STORE: the file or dataset and the UIDs that decide its presentation context."""

    item: Path | str | Dataset
    sop_class: UID
    sop_instance: UID
    transfer_syntax: UID


def _outgoing(item: Path | str | Dataset) -> _Outgoing:
    """The UIDs of a file (header only) or dataset to send; Explicit VR Little Endian if none is set."""
    dataset = item if isinstance(item, Dataset) else pydicom.dcmread(item, stop_before_pixels=True)
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    return _Outgoing(
        item, UID(dataset.SOPClassUID), UID(dataset.SOPInstanceUID), UID(syntax or ExplicitVRLittleEndian)
    )


def _requested_contexts(instances: Sequence[_Outgoing]) -> dict[str, list[str]]:
    """SOP class -> transfer syntaxes: the default storage classes and the instances' own (<= 128)."""
    little_endian = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    contexts: dict[str, list[str]] = {sop: list(little_endian) for sop in DEFAULT_STORAGE_SOP_CLASSES}
    for instance in instances:
        syntaxes = contexts.setdefault(str(instance.sop_class), list(little_endian))
        if instance.transfer_syntax not in syntaxes:
            syntaxes.append(str(instance.transfer_syntax))
    return dict(list(contexts.items())[:128])


def c_store(
    items: Iterable[Path | str | Dataset],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "UNET_MONAI",
    timeout: float = 30.0,
) -> StoreResult:
    """DIMSE C-STORE of files and/or datasets to ``called_aet`` at ``host:port`` over one association.

    Requests Segmentation Storage and the usual image storage SOP classes (plus any other class among
    the items) in Explicit / Implicit VR Little Endian and each item's own transfer syntax. PacsError
    when the association cannot be made or any store fails.
    """
    from pynetdicom import AE

    node = f"{called_aet}@{host}:{port}"
    instances = [_outgoing(item) for item in items]
    if not instances:
        raise PacsError(f"nothing to C-STORE to {node}")
    ae = AE(ae_title=calling_aet)
    for attribute in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
        setattr(ae, attribute, timeout)
    for sop_class, transfer_syntaxes in _requested_contexts(instances).items():
        ae.add_requested_context(sop_class, transfer_syntaxes)
    association = ae.associate(host, port, ae_title=called_aet)
    if not association.is_established:
        if association.is_rejected:
            raise PacsError(f"C-STORE association to {node} rejected (calling AE {calling_aet})")
        raise PacsError(
            f"cannot associate with DICOM node {node} (calling AE {calling_aet}): "
            "connection refused, aborted or no answer"
        )
    result = StoreResult(url=f"dicom://{node}")
    try:
        for message_id, (item, sop_class, sop_uid, _) in enumerate(instances, start=1):
            try:
                status = association.send_c_store(item, msg_id=message_id % 65536)
            except (ValueError, AttributeError) as error:
                raise PacsError(f"C-STORE of {sop_uid} to {node} impossible: {error}") from None
            code = int(status.Status) if "Status" in status else None
            if code in C_STORE_OK:
                result.stored.append(str(sop_uid))
            else:
                shown = "no response (timeout or abort)" if code is None else f"status 0x{code:04X}"
                result.failed[str(sop_uid)] = shown
                raise PacsError(f"C-STORE of {sop_class.name} {sop_uid} to {node} failed: {shown}")
    finally:
        if association.is_established:
            association.release()
    logger.info("C-STORE: stored %d instances on %s", len(result.stored), node)
    return result
