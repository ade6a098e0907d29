"""PACS transport: DICOMweb (QIDO-RS / WADO-RS / STOW-RS) and DIMSE C-STORE.

:class:`DicomWebPacs` finds, pulls and stores instances over DICOMweb (``dicomweb-client``);
:func:`c_store` sends files or datasets to a DICOM node with ``pynetdicom``. Every failure is raised as a
:class:`PacsError` with a one-line message naming the server and the UID involved. Logs name files,
UIDs and counts only, never patient attributes.

Every request has a connect timeout (:data:`DEFAULT_CONNECT_TIMEOUT`: seconds to open the TCP connection)
and a read timeout (:data:`DEFAULT_TIMEOUT`: seconds the server may stay silent, waiting for an answer or
for the next bytes of one; not a limit on a whole transfer). A timeout is never retried: a server that
accepts a connection and never answers fails after one read timeout, in one line
``<url>: no answer within N s (...)``. Refused or reset connections and HTTP 408 / 429 / 503 / 504 are
retried (``max_attempts``). Names of pulled files come from the server's answers and are sanitised
(:func:`unet_monai.io.safe_name`); every file is written atomically (:mod:`unet_monai.io`).
"""

from __future__ import annotations

import logging
import re
import socket
import time
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

from unet_monai.dicom.series import shown
from unet_monai.io import atomic_output, error_line, output_path, safe_name

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_STORAGE_SOP_CLASSES",
    "DEFAULT_TIMEOUT",
    "DicomWebPacs",
    "PacsError",
    "StoreResult",
    "c_store",
    "read_instances",
]

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds to open a connection to the PACS
DEFAULT_TIMEOUT = 60.0  # seconds the PACS may stay silent (no answer, or no next bytes of one)
RETRIED_HTTP_STATUSES = frozenset({408, 429, 503, 504})
FIRST_RETRY_WAIT = 0.5  # seconds; doubled after each attempt
MAX_QIDO_PAGES = 100  # a server that ignores "offset" would otherwise be asked forever

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


def no_answer(where: str, seconds: float, context: str) -> str:
    """The one line for a server that accepted the connection and stayed silent (the read timeout)."""
    return f"{where}: no answer within {seconds:g} s ({context}; see --timeout)"


def no_connection(where: str, seconds: float, context: str) -> str:
    """The one line for a server whose connection did not open in time (the connect timeout)."""
    return f"{where}: no connection within {seconds:g} s ({context}; see --connect-timeout)"


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


def _write_dicom(dataset: Dataset, path: Path) -> None:
    """Write ``dataset`` as a DICOM file at ``path`` atomically (:func:`unet_monai.io.atomic_output`)."""
    with atomic_output(path) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)


def _unique_name(text: str, suffix: str, used: set[str]) -> str:
    """A safe file name from ``text`` (a UID from the server) that no earlier file of ``used`` has."""
    base = safe_name(text)
    name, number = f"{base}{suffix}", 1
    while name in used:
        number += 1
        name = f"{base}-{number}{suffix}"
    used.add(name)
    return name


def _series_summary(item: Any) -> dict[str, Any]:
    """The series-level attributes of a QIDO-RS result as ``{keyword: value}`` (no patient attributes);
    ValueError (naming no value) when the item is not a DICOM JSON dataset with a SeriesInstanceUID."""
    if not isinstance(item, dict):
        raise ValueError(f"a series in the answer is a JSON {type(item).__name__}, not a DICOM JSON dataset")
    try:
        dataset = Dataset.from_json({tag: value for tag, value in item.items() if _is_series_tag(tag)})
    except Exception as error:  # the error could quote a value: name only its type
        raise ValueError(f"a series in the answer is not valid DICOM JSON ({type(error).__name__})") from None
    if not str(dataset.get("SeriesInstanceUID", "")):
        raise ValueError("a series in the answer has no SeriesInstanceUID")
    summary: dict[str, Any] = {}
    for keyword in SERIES_FIELDS:
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        if keyword in ("SeriesNumber", "NumberOfSeriesRelatedInstances"):
            value = int(value)
        summary[keyword] = str(value) if isinstance(value, str) else value
    return summary


def _is_series_tag(tag: Any) -> bool:
    """Whether a DICOM JSON key is one of :data:`SERIES_FIELDS` (patient attributes are never parsed)."""
    return isinstance(tag, str) and tag.upper() in _SERIES_TAGS


_SERIES_TAGS = frozenset(f"{pydicom.datadict.tag_for_keyword(keyword):08X}" for keyword in SERIES_FIELDS)


def _replayable(kwargs: dict[str, Any]) -> bool:
    """Whether a request's body can be sent again (bytes or none; a generator is consumed)."""
    return isinstance(kwargs.get("data"), (bytes, str, type(None)))


def _is_timeout(error: BaseException) -> bool:
    """Whether a requests error is a timeout (a stalled answer body comes as a ConnectionError)."""
    return isinstance(error, requests.exceptions.Timeout) or "timed out" in str(error).lower()


class _RetryingSession(requests.Session):
    """A requests session that retries refused / reset connections and HTTP 408 / 429 / 503 / 504 up to
    ``max_attempts`` times (0.5 s, 1 s, ... between tries), never a timeout, and never a request whose
    body cannot be sent again."""

    def __init__(self, max_attempts: int, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.max_attempts = max(1, max_attempts)
        self.default_timeout = timeout

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        attempt = 1
        while True:
            last = attempt >= self.max_attempts or not _replayable(kwargs)
            try:
                response = super().request(method, url, *args, **kwargs)
            except requests.exceptions.ConnectionError as error:
                if last or _is_timeout(error):
                    raise
            else:
                if last or response.status_code not in RETRIED_HTTP_STATUSES:
                    return response
                response.close()
            time.sleep(FIRST_RETRY_WAIT * 2 ** (attempt - 1))
            attempt += 1


class DicomWebPacs:
    """A DICOMweb server (QIDO-RS, WADO-RS, STOW-RS) at ``url``, e.g. ``http://host:8042/dicom-web``."""

    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_TIMEOUT,
        max_attempts: int = 3,
        headers: dict[str, str] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        """``connect_timeout``: seconds to open a connection; ``timeout``: seconds the server may stay
        silent (read timeout). Up to ``max_attempts`` tries per request (0.5 s, 1 s, ... between them)
        on refused or reset connections and HTTP 408 / 429 / 503 / 504; timeouts are not retried."""
        if not (timeout > 0 and connect_timeout > 0):
            raise ValueError(f"timeouts must be positive seconds, got {timeout} and {connect_timeout}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        limits = (self.connect_timeout, self.timeout)
        session = _RetryingSession(max_attempts, limits)
        try:
            self.client = DICOMwebClient(self.url, session=session, headers=headers, timeout=limits)
        except ValueError as error:  # e.g. a URL without http(s)://
            raise PacsError(f"{url}: not a DICOMweb URL ({' '.join(str(error).split())[:200]})") from None
        self.client.set_http_retry_params(retry=False)  # the session retries, never a timeout

    @contextmanager
    def _errors(self, action: str, what: str) -> Iterator[None]:
        """Turn what a request raises into one-line PacsErrors naming the URL and ``what`` (the UIDs).

        Disk errors (an ``OSError`` that is not a requests error, e.g. an ``OutputError`` writing a pulled
        file) pass unchanged. Anything else (an answer that is not DICOM / DICOM JSON) is "unexpected
        answer", naming the error's type only: its message could quote patient attributes.
        """
        context = f"{action} of {what}"
        try:
            yield
        except PacsError:
            raise
        except requests.exceptions.HTTPError as error:
            response = error.response
            status = response.status_code if response is not None else "?"
            reason = response.reason if response is not None else _short_reason(error)
            if status == 404:
                raise PacsError(f"{what} not found on {self.url} ({action}: HTTP 404)") from None
            raise PacsError(f"{context} failed on {self.url}: HTTP {status} {reason}") from None
        except requests.exceptions.ConnectTimeout:
            raise PacsError(no_connection(self.url, self.connect_timeout, context)) from None
        except requests.exceptions.ConnectionError as error:
            if _is_timeout(error):
                raise PacsError(no_answer(self.url, self.timeout, context)) from None
            raise PacsError(
                f"cannot reach DICOMweb server {self.url} ({context}): {_short_reason(error)}"
            ) from None
        except requests.exceptions.Timeout:
            raise PacsError(no_answer(self.url, self.timeout, context)) from None
        except requests.exceptions.JSONDecodeError:
            raise PacsError(f"{context}: unexpected answer from {self.url}: not JSON") from None
        except requests.exceptions.RequestException as error:
            raise PacsError(f"{context} failed on {self.url}: {_short_reason(error)}") from None
        except OSError:
            raise
        except ValueError as error:  # ours (naming no value) or dicomweb-client's (media type, ...)
            reason = (
                " ".join(str(error).split())[:200] if _is_ours_or_dicomweb(error) else type(error).__name__
            )
            raise PacsError(f"{context}: unexpected answer from {self.url}: {reason}") from None
        except Exception as error:  # noqa: BLE001 - any decoding failure of an answer is one line
            raise PacsError(
                f"{context}: unexpected answer from {self.url} ({type(error).__name__})"
            ) from None

    def find_series(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """QIDO-RS: the study's series (optionally one modality), each a dict of :data:`SERIES_FIELDS`.

        Pages through the answer with ``offset`` and stops when a page brings no new series (a server
        that ignores ``offset``). PacsError when the study has no series (unknown study) on the server.
        """
        filters = {"Modality": modality} if modality else None
        fields = list(SERIES_FIELDS[2:6])
        series: dict[str, dict[str, Any]] = {}
        with self._errors("QIDO-RS series search", f"study {shown(study_uid)}"):
            for _ in range(MAX_QIDO_PAGES):
                page = self.client.search_for_series(
                    study_instance_uid=study_uid, search_filters=filters, fields=fields, offset=len(series)
                )
                if not isinstance(page, list):
                    raise ValueError(f"the answer is a JSON {type(page).__name__}, not a list of series")
                found = [_series_summary(item) for item in page]
                new = {s["SeriesInstanceUID"]: s for s in found if s["SeriesInstanceUID"] not in series}
                if not new:
                    break
                series.update(new)
            else:
                raise ValueError(f"more than {MAX_QIDO_PAGES} pages of series")
        if not series:
            kind = f"no {modality} series" if modality else "no series"
            raise PacsError(f"{kind} in study {shown(study_uid)} on {self.url} (unknown study?)")
        logger.info("found %d series in study %s on %s", len(series), shown(study_uid), self.url)
        return list(series.values())

    def pull_series(self, study_uid: str, series_uid: str, folder: Path | str) -> list[Path]:
        """WADO-RS: write every instance of the series into ``folder`` (atomically), each named after its
        SOPInstanceUID made safe (:func:`unet_monai.io.safe_name`, ``-2``, ``-3`` ... on a clash).

        Instances come as stored on the server (no transcoding). Returns the files, sorted by name. On
        error the files this call wrote are removed again.
        """
        folder = Path(folder)
        paths: list[Path] = []
        used: set[str] = set()
        what = f"series {shown(series_uid)} of study {shown(study_uid)}"
        try:
            with self._errors("WADO-RS retrieve", what):
                for dataset in self.client.iter_series(study_uid, series_uid, media_types=AS_STORED):
                    if not isinstance(dataset, Dataset):
                        raise TypeError("an instance of the answer is not a DICOM dataset")
                    folder.mkdir(parents=True, exist_ok=True)
                    path = output_path(folder, _unique_name(str(dataset.SOPInstanceUID), ".dcm", used))
                    _write_dicom(dataset, path)
                    paths.append(path)
        except BaseException:
            for path in paths:
                path.unlink(missing_ok=True)
            raise
        if not paths:
            raise PacsError(f"{what} on {self.url} has no instances")
        logger.info("pulled %d instances of series %s to %s", len(paths), shown(series_uid), folder)
        return sorted(paths)

    def pull_study(
        self, study_uid: str, folder: Path | str, modality: str | None = None
    ) -> dict[str, list[Path]]:
        """Pull every series of the study (optionally one modality) to ``folder/<SeriesInstanceUID>/``
        (the UID made safe, :func:`unet_monai.io.safe_name`). Returns ``{SeriesInstanceUID: files}``.
        """
        folder = Path(folder)
        pulled: dict[str, list[Path]] = {}
        used: set[str] = set()
        for series in self.find_series(study_uid, modality):
            series_uid = series["SeriesInstanceUID"]
            subfolder = output_path(folder, _unique_name(series_uid, "", used))
            pulled[series_uid] = self.pull_series(study_uid, series_uid, subfolder)
        return pulled

    def store(self, items: Iterable[Path | str | Dataset]) -> StoreResult:
        """STOW-RS: store files and/or datasets; PacsError when the server refuses any of them."""
        datasets = read_instances(items)
        if not datasets:
            raise PacsError(f"nothing to store on {self.url}")
        studies = sorted({shown(str(ds.get("StudyInstanceUID", "?"))) for ds in datasets})
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


def _is_ours_or_dicomweb(error: BaseException) -> bool:
    """Whether ``error`` was raised by this package or by dicomweb-client (their messages name no value
    of a dataset), not by a decoder whose message could quote one."""
    traceback = error.__traceback__
    module = ""
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        traceback = traceback.tb_next
    return module.startswith(("unet_monai", "dicomweb_client"))


def _short_reason(error: BaseException) -> str:
    """The gist of a requests error on one line, e.g. 'connection refused' or '[Errno -2] Name or ...'."""
    text = error_line(error)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        return "connection refused" if "Errno 111" in errno.group(0) else errno.group(0).strip()
    return text[:200]


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


class _Records(logging.Handler):
    """Keeps the messages of the log records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _pynetdicom_messages() -> Iterator[list[str]]:
    """What pynetdicom logs meanwhile, kept (its errors become our one line) instead of propagated."""
    records = _Records()
    pynetdicom_logger = logging.getLogger("pynetdicom")
    propagate = pynetdicom_logger.propagate
    pynetdicom_logger.addHandler(records)
    pynetdicom_logger.propagate = False
    try:
        yield records.messages
    finally:
        pynetdicom_logger.removeHandler(records)
        pynetdicom_logger.propagate = propagate


def _association_failure(
    messages: Sequence[str], node: str, calling_aet: str, timeout: float, connect_timeout: float
) -> str:
    """The one line for an association that was neither established nor rejected, from pynetdicom's log."""
    context = "C-STORE association request"
    if any("ACSE timeout" in message for message in messages):
        return no_answer(f"dicom://{node}", timeout, context)
    failures = [m.split(":", 1)[1].strip() for m in messages if m.startswith("TCP Initialisation Error:")]
    if failures and "timed out" in failures[0]:
        return no_connection(f"dicom://{node}", connect_timeout, context)
    reason = _short_reason(Exception(failures[0])) if failures else "aborted or no answer"
    return f"cannot associate with DICOM node {node} (calling AE {calling_aet}): {reason}"


def c_store(
    items: Iterable[Path | str | Dataset],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "UNET_MONAI",
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> StoreResult:
    """DIMSE C-STORE of files and/or datasets to ``called_aet`` at ``host:port`` over one association.

    Requests Segmentation Storage and the usual image storage SOP classes (plus any other class among
    the items) in Explicit / Implicit VR Little Endian and each item's own transfer syntax.
    ``connect_timeout``: seconds to open the TCP connection; ``timeout``: seconds the node may stay silent
    (pynetdicom's ACSE, DIMSE and network timeouts). PacsError (one line) when the association cannot be
    made or any store fails.
    """
    from pynetdicom import AE

    if not (timeout > 0 and connect_timeout > 0):
        raise ValueError(f"timeouts must be positive seconds, got {timeout} and {connect_timeout}")
    node = f"{called_aet}@{host}:{port}"
    instances = [_outgoing(item) for item in items]
    if not instances:
        raise PacsError(f"nothing to C-STORE to {node}")
    ae = AE(ae_title=calling_aet)
    for attribute in ("acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, attribute, timeout)
    ae.connection_timeout = connect_timeout
    for sop_class, transfer_syntaxes in _requested_contexts(instances).items():
        ae.add_requested_context(sop_class, transfer_syntaxes)
    with _pynetdicom_messages() as messages:
        association = ae.associate(host, port, ae_title=called_aet)
    if not association.is_established:
        if association.is_rejected:
            raise PacsError(f"C-STORE association to {node} rejected (calling AE {calling_aet})")
        raise PacsError(_association_failure(messages, node, calling_aet, timeout, connect_timeout))
    # Nagle's algorithm off: pynetdicom writes a C-STORE's command and data set apart, and with Nagle on
    # the last piece waits for the peer's delayed ACK (~40 ms): 51 ms per instance to a pynetdicom SCP on
    # loopback, 8 ms without it.
    association.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    result = StoreResult(url=f"dicom://{node}")
    try:
        for message_id, (item, sop_class, sop_uid, _) in enumerate(instances, start=1):
            started = time.monotonic()
            try:
                with _pynetdicom_messages() as messages:
                    status = association.send_c_store(item, msg_id=message_id % 65536)
            except (ValueError, AttributeError) as error:
                raise PacsError(f"C-STORE of {sop_uid} to {node} impossible: {error}") from None
            code = int(status.Status) if "Status" in status else None
            if code in C_STORE_OK:
                result.stored.append(str(sop_uid))
                continue
            if code is None and (
                any("DIMSE timeout" in m for m in messages) or time.monotonic() - started >= timeout
            ):
                result.failed[str(sop_uid)] = "no answer"
                raise PacsError(
                    no_answer(f"dicom://{node}", timeout, f"C-STORE of {sop_class.name} {sop_uid}")
                )
            failure = "no response (association aborted)" if code is None else f"status 0x{code:04X}"
            result.failed[str(sop_uid)] = failure
            raise PacsError(f"C-STORE of {sop_class.name} {sop_uid} to {node} failed: {failure}")
    finally:
        if association.is_established:
            association.release()
    logger.info("C-STORE: stored %d instances on %s", len(result.stored), node)
    return result
