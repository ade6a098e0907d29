"""`unet-monai serve`, the listening DICOM node, against a real Orthanc that routes stable series to it
(docker/orthanc/route-to-node.lua) and real pynetdicom peers: the SEG comes back into the same study,
a kill -9 mid-job loses nothing and sends one SEG, non-image series are skipped with a reason, and the
faults (unknown AE, unsupported SOP class, full queue, full disk, a series that never completes, a peer
that is down) each end as the operator is told. Jobs use the hippocampus bundle's shipped weights."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import HIPPOCAMPUS_BUNDLE, REPO_ROOT, require, run_cli
from tests.dicom_helpers import HIPPOCAMPUS_IMAGE, PATIENT_ID, PATIENT_NAME, write_scanner_study
from tests.orthanc_server import (
    INSTALL_HINT,
    OrthancServer,
    find_dicomweb_plugin,
    find_orthanc,
    free_port,
    orthanc_server,
)
from unet_monai.dicom.pacs import DicomWebPacs, PacsError, c_store
from unet_monai.dicom.selection import parse_rules
from unet_monai.dicom.write_series import write_series
from unet_monai.node import queue as node_queue
from unet_monai.node.queue import NodeBusyError
from unet_monai.node.server import Node, NodeSettings
from unet_monai.node.status import node_status, status_lines
from unet_monai.node.worker import WorkerSettings

ROUTING_SCRIPT = REPO_ROOT / "docker" / "orthanc" / "route-to-node.lua"
REAL_SEG = REPO_ROOT.parent / "shared" / "data" / "dicom-ct-liver-seg" / "liver.dcm"
NODE_AET = "UNET_MONAI"
SENDER_AET = "MODALITY1"


@pytest.fixture(scope="module")
def node_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(node_port: int) -> Iterator[OrthancServer]:
    """An Orthanc that routes each stable image series to the node on ``node_port`` (the Lua script
    OPERATIONS.md gives), with a StableAge of 1 s."""
    if find_orthanc() is None or find_dicomweb_plugin() is None:
        pytest.skip(f"Orthanc not installed: {INSTALL_HINT}")
    settings = {
        "LuaScripts": [str(ROUTING_SCRIPT)],
        "DicomModalities": {"unet_monai_node": [NODE_AET, "127.0.0.1", node_port]},
        "StableAge": 1,
    }
    with orthanc_server(settings=settings) as server:
        yield server


def hippocampus_series(folder: Path) -> list[Path]:
    """The real hippocampus volume as a new MR series (new study) in ``folder``, in slice order."""
    image = nib.load(require(HIPPOCAMPUS_IMAGE))
    files = write_series(
        np.asarray(image.dataobj), image.affine, folder, patient_name=PATIENT_NAME, patient_id=PATIENT_ID
    )
    return files


def uids(path: Path) -> tuple[str, str, str]:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID)


def node_settings(store: Path, **options: Any) -> NodeSettings:
    """Settings of an in-process node on a free port with short timings; ``options`` override them."""
    worker = WorkerSettings(bundle=HIPPOCAMPUS_BUNDLE.resolve(), settle_seconds=0.5, retry_seconds=0.3)
    for key in [k for k in options if hasattr(worker, k)]:
        setattr(worker, key, options.pop(key))
    values = {"port": 0, "allowed_aets": [SENDER_AET], "poll_seconds": 0.1, **options}
    return NodeSettings(store=store, worker=worker, **values)


def wait_for(check: Callable[[], Any], seconds: float, what: str, store: Path | None = None) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` (and the store's status)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    shown = "\n".join(status_lines(node_status(store))) if store is not None else ""
    pytest.fail(f"{what}: not within {seconds:g} s\n{shown}")


def job_of(store: Path, series_uid: str) -> dict[str, Any] | None:
    return next((job for job in node_status(store)["jobs"] if job["series_uid"] == series_uid), None)


def job_in(store: Path, series_uid: str, *states: str) -> dict[str, Any] | None:
    job = job_of(store, series_uid)
    return job if job is not None and job["state"] in states else None


def seg_series_on(orthanc: OrthancServer, study_uid: str) -> list[dict[str, Any]]:
    try:
        return DicomWebPacs(orthanc.dicomweb_url).find_series(study_uid, modality="SEG")
    except PacsError:
        return []


def assert_one_seg_of(orthanc: OrthancServer, files: list[Path], job: dict[str, Any], tmp_path: Path) -> None:
    """The study on Orthanc holds exactly one SEG instance, the job's, referencing only the source series
    and each of its instances."""
    study_uid, series_uid, _ = uids(files[0])
    [seg_series] = seg_series_on(orthanc, study_uid)
    assert seg_series["NumberOfSeriesRelatedInstances"] == 1
    [pulled] = DicomWebPacs(orthanc.dicomweb_url).pull_series(
        study_uid, seg_series["SeriesInstanceUID"], tmp_path / "pulled"
    )
    seg = pydicom.dcmread(pulled)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == study_uid
    assert seg.SOPInstanceUID == job["seg_sop_instance_uid"]
    [referenced] = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series_uid
    instances = {str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence}
    assert instances == {uids(path)[2] for path in files}


def test_orthanc_routes_a_stable_series_and_gets_the_seg_into_the_same_study(
    orthanc: OrthancServer, node_port: int, tmp_path: Path
) -> None:
    files = hippocampus_series(tmp_path / "series")
    study_uid, series_uid, _ = uids(files[0])
    store = tmp_path / "store"
    peer = (orthanc.dicom_host, orthanc.dicom_port, orthanc.aet)
    with Node(node_settings(store, port=node_port, allowed_aets=[orthanc.aet], peer=peer)):
        DicomWebPacs(orthanc.dicomweb_url).store(files)  # the modality stores the study on the PACS
        job = wait_for(
            lambda: job_in(store, series_uid, "done"), 60, "routed series segmented and sent", store
        )
        # the SEG came back to Orthanc, became stable too and was not routed again (Lua skips SEG)
        wait_for(
            lambda: "(SEG) not routed" in orthanc.log.read_text(errors="replace"), 20, "SEG series not routed"
        )
    assert [j["series_uid"] for j in node_status(store)["jobs"]] == [series_uid]
    assert job["instances"] == len(files) and job["runs"] == 1 and job["sends"] == 1
    assert job["delivered"] == [f"dicom://{orthanc.aet}@{orthanc.dicom_host}:{orthanc.dicom_port}"]
    assert_one_seg_of(orthanc, files, job, tmp_path)

    # a restart neither re-runs nor re-sends a finished job; the same instances again do not re-open it
    with Node(node_settings(store, allowed_aets=[SENDER_AET], peer=peer)) as node:
        c_store(files, "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        time.sleep(1.0)
    again = job_of(store, series_uid)
    assert again["state"] == "done" and again["runs"] == 1 and again["sends"] == 1


def test_kill_9_mid_job_then_restart_sends_exactly_one_seg(
    orthanc: OrthancServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = hippocampus_series(tmp_path / "series")
    study_uid, series_uid, _ = uids(files[0])
    store, port = tmp_path / "store", free_port()
    command = [sys.executable, "-m", "unet_monai.cli", "serve", "--bundle", str(HIPPOCAMPUS_BUNDLE)]
    command += ["--store", str(store), "--port", str(port), "--allow-aet", SENDER_AET]
    command += ["--stow", orthanc.dicomweb_url, "--settle-seconds", "0.5"]  # the SEG goes by STOW-RS
    logs = [tmp_path / "first.log", tmp_path / "second.log"]

    def start(log: Path) -> subprocess.Popen:
        with open(log, "wb") as output:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
        wait_for(lambda: "listening as" in log.read_text() or process.poll() is not None, 60, "node started")
        assert process.poll() is None, log.read_text()[-3000:]
        return process

    first = start(logs[0])
    try:
        c_store(files, "127.0.0.1", port, NODE_AET, calling_aet=SENDER_AET)
        wait_for(lambda: job_in(store, series_uid, "running"), 30, "job running", store)
    finally:
        first.send_signal(signal.SIGKILL)  # the segmentation takes about a second: killed inside it
        first.wait(10)
    killed = job_of(store, series_uid)
    # in the rare case the SEG was already recorded, it is resent, never made again
    assert killed["state"] in ("running", "sending"), killed
    if killed["state"] == "running":
        assert not seg_series_on(orthanc, study_uid)

    second = start(logs[1])
    try:
        job = wait_for(lambda: job_in(store, series_uid, "done"), 90, "job done after the restart", store)
        second.send_signal(signal.SIGTERM)  # a clean stop
        assert second.wait(30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    reruns = killed["state"] == "running"
    assert job["runs"] == (2 if reruns else 1) and job["sends"] == 1
    assert job["delivered"] == [orthanc.dicomweb_url]
    if not reruns:
        assert job["seg_sop_instance_uid"] == killed["seg_sop_instance_uid"]
    assert_one_seg_of(orthanc, files, job, tmp_path)
    text = "".join(log.read_text() for log in logs)
    recovered = "interrupted while running, runs again" if reruns else "not yet sent, resent"
    assert recovered in text and "stopped" in text
    assert "Secretname" not in text and PATIENT_ID not in text

    code, out, _ = run_cli(["node-status", "--store", str(store)], capsys)
    assert code == 1 and "node not running" in out and f"done      series {series_uid}" in out


def test_non_image_series_are_stored_and_skipped_with_a_reason(tmp_path: Path) -> None:
    store = tmp_path / "store"
    report = Dataset()  # a Basic Text SR, as a PACS sends it along with a study
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    report.SOPInstanceUID, report.SeriesInstanceUID, report.StudyInstanceUID = (generate_uid() for _ in "123")
    report.Modality = "SR"
    with Node(node_settings(store, settle_seconds=0.2)) as node:
        c_store([require(REAL_SEG), report], "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        wait_for(
            lambda: len([j for j in node_status(store)["jobs"] if j["state"] == "skipped"]) == 2,
            20,
            "both skipped",
            store,
        )
    # an instance written just before a kill -9, its record not: the next start re-opens the series
    jobs = {job["modality"]: job for job in node_status(store)["jobs"]}
    folder = store / "incoming" / jobs["SR"]["name"]
    report.SOPInstanceUID = generate_uid()
    report.save_as(folder / f"{report.SOPInstanceUID}.dcm", enforce_file_format=True)
    with Node(node_settings(store, settle_seconds=0.2)):
        wait_for(lambda: job_of(store, report.SeriesInstanceUID)["runs"] == 2, 20, "SR re-opened", store)
    jobs = {job["modality"]: job for job in node_status(store)["jobs"]}
    assert jobs["SR"]["instances"] == 2 and jobs["SR"]["state"] == "skipped" and jobs["SEG"]["runs"] == 1
    assert set(jobs) == {"SEG", "SR"}
    assert "a DICOM SEG object, not an image" in jobs["SEG"]["reason"]
    assert "a DICOM SR object, not an image" in jobs["SR"]["reason"]
    for job in jobs.values():
        assert "\n" not in job["reason"]
        assert len(list((store / "incoming" / job["name"]).glob("*.dcm"))) == job["instances"]


def test_series_rules_skip_a_localizer_and_what_the_rules_file_leaves_out(tmp_path: Path) -> None:
    """The default rule and a --rules file decide per series before any inference: a scanner's tri-plane
    localizer and a volume no selection matches are stored and skipped, each with its reason."""
    study = tmp_path / "study"
    write_scanner_study(require(HIPPOCAMPUS_IMAGE), study)
    localizer = sorted(study.glob("loc*.dcm"))
    volume = write_series(
        np.random.default_rng(0).integers(0, 300, size=(16, 16, 8)).astype(np.float32),
        np.diag([1.0, 1.0, 2.0, 1.0]),
        tmp_path / "t1",
        series_description="T1 axial",
    )
    rules = parse_rules({"selections": [{"name": "T2 only", "conditions": {"SeriesDescription": "(?i)t2"}}]})
    store = tmp_path / "store"
    with Node(node_settings(store, settle_seconds=0.2, rules=rules)) as node:
        c_store([*localizer, *volume], "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        wait_for(
            lambda: len([j for j in node_status(store)["jobs"] if j["state"] == "skipped"]) == 2,
            20,
            "both skipped",
            store,
        )
    reasons = {job["series_uid"]: job["reason"] for job in node_status(store)["jobs"]}
    assert "a localizer (ImageType LOCALIZER)" in reasons[uids(localizer[0])[1]]
    assert "matches no selection of rules" in reasons[uids(volume[0])[1]]
    assert not list((store / "output").rglob("*.dcm"))


def pdf_document() -> Dataset:
    document = Dataset()
    document.file_meta = FileMetaDataset()
    document.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    document.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF Storage
    document.SOPInstanceUID, document.SeriesInstanceUID, document.StudyInstanceUID = (
        generate_uid() for _ in "123"
    )
    document.Modality = "DOC"
    return document


def test_refused_callers_and_sop_classes_and_a_series_with_a_missing_slice(
    tmp_path: Path, package_log: io.StringIO
) -> None:
    store = tmp_path / "store"
    files = hippocampus_series(tmp_path / "series")
    gap, missing = files[:10] + files[11:], files[10]
    series_uid = uids(files[0])[1]
    with Node(node_settings(store)) as node:
        with pytest.raises(PacsError, match="rejected \\(calling AE STRANGER\\)"):
            c_store(gap[:1], "127.0.0.1", node.port, NODE_AET, calling_aet="STRANGER")
        assert "association from AE STRANGER at 127.0.0.1:" in package_log.getvalue()
        with pytest.raises(PacsError, match="No presentation context for 'Encapsulated PDF Storage'"):
            c_store([pdf_document()], "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        with pytest.raises(NodeBusyError, match="another node serves this store"):
            Node(node_settings(store)).start()

        c_store(gap, "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        job = wait_for(lambda: job_in(store, series_uid, "failed"), 20, "gap series failed", store)
        assert "1 slice(s) missing between" in job["reason"] and job["instances"] == len(gap)
        # the operator sends the series again: a failed series re-opens (and fails again)
        c_store(gap, "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        assert job_of(store, series_uid)["state"] in ("receiving", "running", "failed")
        wait_for(
            lambda: (j := job_in(store, series_uid, "failed")) and j["runs"] == 2, 20, "failed again", store
        )
        # the missing slice arrives late: the series re-opens and is segmented whole
        c_store([missing], "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        done = wait_for(lambda: job_in(store, series_uid, "done"), 30, "whole series segmented", store)
    assert done["instances"] == len(files) and done["runs"] == 3 and done["delivered"] == []
    assert [p["state"] for p in done["previous"]] == ["failed", "failed"]
    assert [j["series_uid"] for j in node_status(store)["jobs"]] == [series_uid]


def store_one(port: int, path: Path) -> Dataset:
    """C-STORE one file with pynetdicom and return the whole status (its ErrorComment included)."""
    from pynetdicom import AE

    ae = AE(ae_title=SENDER_AET)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert association.is_established
    try:
        return association.send_c_store(path)
    finally:
        association.release()


def test_full_queue_refuses_a_new_series_until_a_series_that_never_completes_fails(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first, second = hippocampus_series(tmp_path / "a"), hippocampus_series(tmp_path / "b")
    with Node(node_settings(store, max_queue=1, settle_seconds=60, series_timeout=1.5)) as node:
        assert store_one(node.port, first[0]).Status == 0
        refused = store_one(node.port, second[0])
        assert refused.Status == 0xA700 and refused.ErrorComment == "queue full (1 unfinished series)"
        assert store_one(node.port, first[1]).Status == 0  # the series already queued goes on
        job = wait_for(lambda: job_in(store, uids(first[0])[1], "failed"), 10, "series expired", store)
        assert "still receiving after 1.5 s (2 instances); never completed" in job["reason"]
        assert store_one(node.port, second[0]).Status == 0
    assert job_of(store, uids(second[0])[1])["state"] == "receiving"


def test_disk_full_while_storing_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    files = hippocampus_series(tmp_path / "series")

    def half_then_full(path: Path, data: bytes) -> None:
        with open(path, "wb") as stream:
            stream.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with Node(node_settings(store, settle_seconds=60)) as node:
        monkeypatch.setattr(node_queue, "_write_file", half_then_full)
        status = store_one(node.port, files[0])
        assert status.Status == 0xA700 and status.ErrorComment == "disk full on the node"
        with pytest.raises(PacsError, match="failed: status 0xA700"):
            c_store(files[1:3], "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        leftovers = [p for p in (store / "incoming").rglob("*") if p.is_file()]
        assert leftovers == [] and node_status(store)["jobs"] == []
        monkeypatch.undo()
        assert store_one(node.port, files[0]).Status == 0
    [job] = node_status(store)["jobs"]
    assert job["instances"] == 1 and job["state"] == "receiving"


def test_disk_full_while_segmenting_is_waited_out_and_the_series_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk during the segmentation (as MONAI raises it: wrapped) is not a failed series: the job
    waits in 'receiving' with the reason and its next try (shown by node-status), then runs again."""
    from unet_monai.dicom import infer

    store = tmp_path / "store"
    files = hippocampus_series(tmp_path / "series")
    real = infer.segment_dicom
    calls: list[int] = []

    def full_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "seg.dcm")
            raise RuntimeError("applying transform <SaveImage>") from full
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "segment_dicom", full_once)
    with Node(node_settings(store, settle_seconds=0.2, retry_seconds=1.0)) as node:
        c_store(files, "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        series_uid = uids(files[0])[1]
        waiting = wait_for(
            lambda: job_in(store, series_uid, "receiving") if calls else None, 30, "tried", store
        )
        assert "disk full while segmenting" in (waiting["reason"] or "") and waiting["attempts"] == 1
        assert "disk full while segmenting" in "\n".join(status_lines(node_status(store)))
        job = wait_for(lambda: job_in(store, series_uid, "done"), 60, "segmented on the second try", store)
    assert len(calls) == 2 and job["runs"] == 2 and job["seg_sop_instance_uid"]
    assert len(list((store / "output").rglob("*_seg.dcm"))) == 1


@contextmanager
def storage_peer(port: int, aet: str) -> Iterator[list[str]]:
    """A pynetdicom Storage SCP on ``port`` that keeps the SOP Instance UIDs it is sent."""
    from pynetdicom import AE, StoragePresentationContexts, evt

    received: list[str] = []
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = AE(ae_title=aet)
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield received
    finally:
        server.shutdown()


def test_peer_down_is_retried_with_back_off_and_delivered_once_up(tmp_path: Path) -> None:
    store, port = tmp_path / "store", free_port()
    files = hippocampus_series(tmp_path / "series")
    series_uid = uids(files[0])[1]
    with Node(node_settings(store, peer=("127.0.0.1", port, "PEER"), retry_seconds=0.3)) as node:
        c_store(files, "127.0.0.1", node.port, NODE_AET, calling_aet=SENDER_AET)
        job = wait_for(
            lambda: (j := job_in(store, series_uid, "sending")) and j["attempts"] >= 3 and j,
            60,
            "three failed tries",
            store,
        )
        assert "connection refused" in job["last_error"] and f"PEER@127.0.0.1:{port}" in job["last_error"]
        line = next(line for line in status_lines(node_status(store)) if series_uid in line)
        assert line.startswith("sending") and "failed: cannot associate" in line and "next try in" in line
        with storage_peer(port, "PEER") as received:
            done = wait_for(lambda: job_in(store, series_uid, "done"), 30, "delivered", store)
    assert received == [done["seg_sop_instance_uid"]] and done["sends"] == 1 and done["runs"] == 1


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--set", "no_such_id=1"], "no_such_id"),
        (["--checkpoint", "missing.pt"], "missing.pt"),
        (["--rules", "missing_rules.json"], "missing_rules.json: no such rules file"),
        (["--description", "(t1"], "--description '(t1': bad regular expression"),
        (["--max-queue", "0"], "--max-queue: must be at least 1"),
    ],
)
def test_bad_serve_options_stop_before_listening(
    extra: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Overrides, weights and rules are checked as infer checks them, before the node listens: one line."""
    args = ["serve", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--store", str(tmp_path / "store")]
    code, out, err = run_cli([*args, "--allow-aet", "any", "--port", "0", *extra], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert "listening" not in out and not (tmp_path / "store" / "node.json").exists()
