"""PACS transport end to end against a real Orthanc (DICOMweb plugin) on loopback, with real DICOM data:
STOW-RS upload, QIDO-RS search, WADO-RS pull, a reference SEG stored by STOW-RS and by C-STORE, and the
one-line errors for unknown studies, closed ports and rejected associations."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.conftest import SHARED_DATA, require
from tests.orthanc_server import (
    OrthancServer,
    free_port,
)
from unet_monai.dicom.pacs import DicomWebPacs, PacsError, c_store

MR_SERIES = SHARED_DATA / "dicom-mr-series-nolabel" / "Study1" / "13_HCropVolume"
CT_LIVER = SHARED_DATA / "dicom-ct-liver-seg"
CT_SERIES = CT_LIVER / "ct-3slice"
LIVER_SEG = CT_LIVER / "liver.dcm"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
UNKNOWN_UID = "1.2.826.0.1.3680043.8.498.1234567890"


@pytest.fixture(scope="module")
def pacs(orthanc: OrthancServer) -> DicomWebPacs:
    return DicomWebPacs(orthanc.dicomweb_url)


def _files(folder: Path) -> list[Path]:
    return sorted(require(folder).glob("*.dcm"))


@pytest.fixture(scope="module")
def originals() -> dict[str, list[Path]]:
    """The real series to upload, by name."""
    return {"mr": _files(MR_SERIES), "ct": _files(CT_SERIES)}


@pytest.fixture(scope="module")
def uploaded(pacs: DicomWebPacs, originals: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """The MR and CT series, stored on the Orthanc by STOW-RS."""
    result = pacs.store(originals["mr"] + originals["ct"])
    expected = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for files in originals.values()
        for p in files
    }
    assert set(result.stored) == expected and not result.failed
    return originals


def _uids(path: Path) -> tuple[str, str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID)


def _rest(orthanc: OrthancServer, path: str, data: bytes | None = None, method: str | None = None):
    """Orthanc's own REST API (JSON answer, or None when there is none)."""
    request = urllib.request.Request(f"{orthanc.rest_url}{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def _orthanc_id(orthanc: OrthancServer, sop_uid: str) -> str | None:
    """Orthanc's identifier of the instance with this SOP Instance UID, None when not stored."""
    found = [hit for hit in _rest(orthanc, "/tools/lookup", sop_uid.encode()) if hit["Type"] == "Instance"]
    return found[0]["ID"] if found else None


def _delete_seg(orthanc: OrthancServer) -> None:
    """Remove the reference SEG from the Orthanc (each SEG test stores it anew)."""
    seg_id = _orthanc_id(orthanc, _uids(LIVER_SEG)[2])
    if seg_id is not None:
        _rest(orthanc, f"/instances/{seg_id}", method="DELETE")


def _assert_seg_beside_ct(orthanc: OrthancServer, pacs: DicomWebPacs, tmp_path: Path) -> None:
    """The stored SEG is in the CT's study, is a SEG, and references the CT series and its slices."""
    study, seg_series, seg_uid, _ = _uids(LIVER_SEG)
    ct = [_uids(p) for p in _files(CT_SERIES)]
    ct_series, ct_instances = ct[0][1], {uids[2] for uids in ct}
    assert {uids[0] for uids in ct} == {study}

    # QIDO-RS: one SEG series in the CT's study.
    [found] = pacs.find_series(study, modality="SEG")
    assert found["SeriesInstanceUID"] == seg_series and found["Modality"] == "SEG"
    assert found["NumberOfSeriesRelatedInstances"] == 1
    assert {s["Modality"] for s in pacs.find_series(study)} == {"CT", "SEG"}

    # Orthanc's REST API: the SEG and the CT slices share one Orthanc study.
    seg_id = _orthanc_id(orthanc, seg_uid)
    ct_id = _orthanc_id(orthanc, next(iter(ct_instances)))
    assert seg_id is not None and ct_id is not None
    assert (
        _rest(orthanc, f"/instances/{seg_id}/study")["ID"]
        == _rest(orthanc, f"/instances/{ct_id}/study")["ID"]
    )
    assert _rest(orthanc, f"/instances/{seg_id}/series")["MainDicomTags"]["Modality"] == "SEG"

    # WADO-RS metadata and the pulled file: references point to the CT series and its instances.
    metadata_json = pacs.client.retrieve_instance_metadata(study, seg_series, seg_uid)
    metadata = Dataset.from_json({tag: value for tag, value in metadata_json.items() if tag != "7FE00010"})
    [pulled] = pacs.pull_series(study, seg_series, tmp_path / "seg")
    for seg in (metadata, pydicom.dcmread(pulled)):
        assert seg.Modality == "SEG" and seg.SOPClassUID == SEGMENTATION_STORAGE
        assert seg.StudyInstanceUID == study
        [referenced] = seg.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == ct_series
        assert {
            str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence
        } == ct_instances
    sources = {
        str(source.ReferencedSOPInstanceUID)
        for frame in pydicom.dcmread(pulled).PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }
    assert sources and sources <= ct_instances
    assert pydicom.dcmread(pulled).PixelData == pydicom.dcmread(LIVER_SEG).PixelData


def test_qido_finds_uploaded_series(pacs: DicomWebPacs, uploaded: dict[str, list[Path]]) -> None:
    for name, modality in (("mr", "MR"), ("ct", "CT")):
        study, series, _, _ = _uids(uploaded[name][0])
        [found] = pacs.find_series(study, modality=modality)
        assert found["StudyInstanceUID"] == study and found["SeriesInstanceUID"] == series
        assert found["Modality"] == modality
        assert found["NumberOfSeriesRelatedInstances"] == len(uploaded[name])
        assert not {"PatientName", "PatientID"} & set(found)
    with pytest.raises(PacsError, match=r"no MR series in study .* on http://127\.0\.0\.1:\d+/dicom-web"):
        pacs.find_series(_uids(uploaded["ct"][0])[0], modality="MR")


@pytest.mark.parametrize("name", ["mr", "ct"])
def test_wado_pull_series_is_identical(
    pacs: DicomWebPacs, uploaded: dict[str, list[Path]], name: str, tmp_path: Path
) -> None:
    """Pulled files carry the originals' UIDs, transfer syntax and pixel data bytes, one file each."""
    study, series, _, _ = _uids(uploaded[name][0])
    pulled = pacs.pull_series(study, series, tmp_path / "pulled")
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == sorted(p.name for p in pulled)
    originals = {_uids(p)[2]: p for p in uploaded[name]}
    assert {p.stem for p in pulled} == set(originals)
    for path in pulled:
        copy = pydicom.dcmread(path)
        original = pydicom.dcmread(originals[path.stem])
        assert _uids(path) == _uids(originals[path.stem])
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert copy.PixelData == original.PixelData
        assert copy.InstanceNumber == original.InstanceNumber


def test_pull_study_one_folder_per_series(
    pacs: DicomWebPacs, uploaded: dict[str, list[Path]], tmp_path: Path
) -> None:
    study, series, _, _ = _uids(uploaded["mr"][0])
    pulled = pacs.pull_study(study, tmp_path, modality="MR")
    assert list(pulled) == [series]
    assert len(pulled[series]) == len(uploaded["mr"])
    assert all(p.parent == tmp_path / series and p.suffix == ".dcm" for p in pulled[series])


def test_logs_name_no_patient(
    orthanc: OrthancServer,
    pacs: DicomWebPacs,
    uploaded: dict[str, list[Path]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Store, pull and C-STORE log UIDs and counts, never the patient's name or ID (even at DEBUG)."""
    header = pydicom.dcmread(uploaded["ct"][0], stop_before_pixels=True)
    study, series, _, _ = _uids(uploaded["ct"][0])
    with caplog.at_level(logging.DEBUG):
        pacs.store(uploaded["ct"])
        pacs.find_series(study)
        pacs.pull_study(study, tmp_path)
        c_store(uploaded["ct"], orthanc.dicom_host, orthanc.dicom_port, orthanc.aet)
    assert series in caplog.text
    for secret in (str(header.PatientName), str(header.PatientID)):
        assert secret and secret not in caplog.text


def test_seg_by_stow_rs(orthanc: OrthancServer, pacs: DicomWebPacs, uploaded, tmp_path: Path) -> None:
    _delete_seg(orthanc)
    result = pacs.store([LIVER_SEG])
    assert result.stored == [_uids(LIVER_SEG)[2]] and not result.failed
    assert result.response is not None and "ReferencedSOPSequence" in result.response
    _assert_seg_beside_ct(orthanc, pacs, tmp_path)


def test_seg_by_c_store(orthanc: OrthancServer, pacs: DicomWebPacs, uploaded, tmp_path: Path) -> None:
    _delete_seg(orthanc)
    assert _orthanc_id(orthanc, _uids(LIVER_SEG)[2]) is None
    result = c_store([LIVER_SEG], orthanc.dicom_host, orthanc.dicom_port, orthanc.aet)
    assert result.stored == [_uids(LIVER_SEG)[2]] and not result.failed
    _assert_seg_beside_ct(orthanc, pacs, tmp_path)


def test_c_store_datasets_and_rejection(orthanc: OrthancServer, uploaded) -> None:
    """Datasets go too; a wrong called AE title is one clear error naming the node."""
    datasets = [pydicom.dcmread(p) for p in uploaded["ct"]]
    result = c_store(datasets, orthanc.dicom_host, orthanc.dicom_port, orthanc.aet, calling_aet="TEST_SCU")
    assert result.stored == [str(ds.SOPInstanceUID) for ds in datasets]
    node = f"NOT_ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    with pytest.raises(PacsError, match=f"association to {node} rejected") as error:
        c_store([LIVER_SEG], orthanc.dicom_host, orthanc.dicom_port, "NOT_ORTHANC")
    assert "\n" not in str(error.value)


def test_c_store_closed_port() -> None:
    port = free_port()
    with pytest.raises(PacsError, match=f"cannot associate with DICOM node ORTHANC@127.0.0.1:{port}"):
        c_store([require(LIVER_SEG)], "127.0.0.1", port, "ORTHANC", timeout=5)


def test_unknown_study_and_series(pacs: DicomWebPacs, uploaded, tmp_path: Path) -> None:
    for call in (
        lambda: pacs.find_series(UNKNOWN_UID),
        lambda: pacs.pull_study(UNKNOWN_UID, tmp_path),
        lambda: pacs.pull_series(UNKNOWN_UID, UNKNOWN_UID + ".1", tmp_path),
    ):
        with pytest.raises(PacsError) as error:
            call()
        message = str(error.value)
        assert UNKNOWN_UID in message and pacs.url in message and "\n" not in message
    assert not list(tmp_path.iterdir())


def test_unreachable_server(tmp_path: Path) -> None:
    """A closed port: one line naming the URL and the UID, without requests' traceback chained."""
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    pacs = DicomWebPacs(url, timeout=5, max_attempts=2)
    seg_study = _uids(require(LIVER_SEG))[0]
    for call, uid in (
        (lambda: pacs.find_series(UNKNOWN_UID), UNKNOWN_UID),
        (lambda: pacs.pull_series(UNKNOWN_UID, UNKNOWN_UID + ".1", tmp_path), UNKNOWN_UID),
        (lambda: pacs.store([LIVER_SEG]), seg_study),
    ):
        with pytest.raises(PacsError, match="cannot reach DICOMweb server") as error:
            call()
        message = str(error.value)
        assert url in message and uid in message and "connection refused" in message and "\n" not in message
        assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.fixture
def failing_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server answering every request with the status in its path's first part
    (``/503/...`` -> 503); yields its URL and the paths it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            asked.append(self.path)
            self.send_response(int(self.path.split("/")[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


def test_http_errors(failing_server: tuple[str, list[str]], tmp_path: Path) -> None:
    """HTTP errors, retried ones (503) too, are one line naming the status, URL and UID."""
    base, asked = failing_server
    for status, attempts in ((500, 1), (503, 2)):
        url = f"{base}/{status}/dicom-web"
        pacs = DicomWebPacs(url, timeout=5, max_attempts=2)
        asked.clear()
        with pytest.raises(PacsError, match=f"HTTP {status}") as error:
            pacs.find_series(UNKNOWN_UID)
        message = str(error.value)
        assert url in message and UNKNOWN_UID in message and "\n" not in message
        assert len(asked) == attempts
    with pytest.raises(PacsError, match=f"not found on {base}/404/dicom-web .*HTTP 404"):
        DicomWebPacs(f"{base}/404/dicom-web").pull_series(UNKNOWN_UID, UNKNOWN_UID + ".1", tmp_path)
