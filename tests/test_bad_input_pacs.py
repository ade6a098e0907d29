"""A PACS that misbehaves: `unet-monai pacs` must stop with one line naming the server, exit code 2,
soon after the configured timeout, and never print a patient attribute or a traceback.

The servers are real sockets on loopback, run by the tests: one accepts connections and never answers,
one never accepts them (its backlog is full), one answers DICOMweb requests with garbage.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA, require
from unet_monai.cli import main
from unet_monai.dicom.pacs import DicomWebPacs, PacsError, c_store

BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
MR_FILE = SHARED_DATA / "dicom-mr-series-nolabel" / "Study1" / "13_HCropVolume" / "1.dcm"
STUDY = "1.2.826.0.1.3680043.8.498.1234567890"
SERIES = STUDY + ".1"
SECRET = "Secretname^Patient"
TIMEOUT = 2.0


@pytest.fixture(autouse=True)
def _live_log_streams() -> None:
    """A bundle's logging.conf (run by an earlier test) points the root logger at the sys.stdout of that
    moment, an earlier test's capture, closed by now: point such handlers at the current one."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stdout


def within_bound(seconds: float, timeout: float = TIMEOUT) -> bool:
    """The failure came soon after the timeout (a correctness bound, not a benchmark)."""
    return seconds < 3 * timeout + 5


def _holding_server(greeting: bytes) -> Iterator[int]:
    """A TCP server on loopback that accepts every connection, sends ``greeting`` (if any) and then
    nothing more, holding the connection open; yields its port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(connection)
            if greeting:
                connection.sendall(greeting)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never sends a byte."""
    yield from _holding_server(b"")


@pytest.fixture
def stalling_server() -> Iterator[int]:
    """Accepts connections, sends the headers of an answer, then stalls in its body."""
    yield from _holding_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 1000\r\n\r\n[{"
    )


@pytest.fixture
def unaccepting_server() -> Iterator[int]:
    """A port whose listen backlog is full and never accepted: a new connection is never completed
    (the kernel drops its SYN), as behind a firewall that drops packets; yields the port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue (its size is the backlog + 1 on Linux)
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(("127.0.0.1", port))
        full = False
    except (TimeoutError, OSError):
        full = True
    finally:
        probe.close()
    if not full:
        pytest.skip("this kernel completes connections beyond a full listen backlog")
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


SERIES_JSON = [
    {
        "0020000D": {"vr": "UI", "Value": [STUDY]},
        "0020000E": {"vr": "UI", "Value": [SERIES]},
        "00080060": {"vr": "CS", "Value": ["MR"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": SECRET}]},
    }
]
# What each fake server answers, by the first part of the request path: (status, content type, body).
ANSWERS: dict[str, tuple[int, str, bytes]] = {
    "html": (200, "application/dicom+json", b"<html><body>Login required</body></html>"),
    "not-a-list": (200, "application/dicom+json", b"[1, 2, 3]"),
    "no-series-uid": (
        200,
        "application/dicom+json",
        json.dumps([{"00100010": {"vr": "PN", "Value": [{"Alphabetic": SECRET}]}}]).encode(),
    ),
    "bad-vr": (200, "application/dicom+json", b'[{"0020000E": {"vr": "XX", "Value": 7}}]'),
    "error-500": (500, "text/plain", f"internal error for {SECRET}".encode()),
}


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """A DICOMweb server on loopback answering from :data:`ANSWERS` (``/<answer>/dicom-web/...``); under
    ``/wado-garbage`` it finds one MR series but sends garbage for its instances (and for STOW-RS)."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            kind = self.path.split("/")[1]
            if kind == "wado-garbage":
                if self.path.split("?")[0].endswith("/series"):
                    self._send(200, "application/dicom+json", json.dumps(SERIES_JSON).encode())
                else:
                    body = b"--xyz\r\nContent-Type: application/dicom\r\n\r\nnot DICOM at all\r\n--xyz--\r\n"
                    self._send(200, 'multipart/related; type="application/dicom"; boundary=xyz', body)
                return
            self._send(*ANSWERS[kind])

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send(200, "application/dicom+json", b"{not json")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A file where the weights are expected: these runs fail at the PACS, before loading it."""
    path = tmp_path / "model.pt"
    path.write_bytes(b"never loaded")
    return path


def run_pacs(url: str, checkpoint: Path, capsys, *extra: str) -> tuple[int, str, float]:
    """``unet-monai pacs`` in-process: exit code, stderr, seconds taken."""
    args = ["pacs", "--url", url, "--study", STUDY, "--bundle", str(BUNDLE), "--checkpoint", str(checkpoint)]
    start = time.monotonic()
    try:
        code = main([*args, *extra])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    seconds = time.monotonic() - start
    return code, capsys.readouterr().err, seconds


def one_error(err: str) -> str:
    assert "Traceback" not in err and SECRET not in err and "Secretname" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    return lines[0]


def test_server_that_never_answers_fails_soon_after_the_timeout(
    silent_server: int, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{silent_server}/dicom-web"
    code, err, seconds = run_pacs(
        url, checkpoint, capsys, "--timeout", f"{TIMEOUT:g}", "--connect-timeout", "3"
    )
    line = one_error(err)
    assert code == 2
    assert re.match(rf"error: {re.escape(url)}: no answer within {TIMEOUT:g} s \(QIDO-RS .*{STUDY}", line), (
        line
    )
    assert within_bound(seconds), f"failed after {seconds:.1f} s"


def test_server_that_never_accepts_fails_after_the_connect_timeout(
    unaccepting_server: int, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{unaccepting_server}/dicom-web"
    code, err, seconds = run_pacs(url, checkpoint, capsys, "--connect-timeout", f"{TIMEOUT:g}")
    line = one_error(err)
    assert code == 2
    assert re.match(rf"error: {re.escape(url)}: no connection within {TIMEOUT:g} s \(QIDO-RS", line), line
    assert within_bound(seconds), f"failed after {seconds:.1f} s"


def test_answer_that_stalls_midway_fails_after_the_timeout(stalling_server: int) -> None:
    url = f"http://127.0.0.1:{stalling_server}/dicom-web"
    start = time.monotonic()
    with pytest.raises(PacsError) as error:
        DicomWebPacs(url, timeout=TIMEOUT, connect_timeout=3).find_series(STUDY)
    seconds = time.monotonic() - start
    message = str(error.value)
    assert re.match(rf"{re.escape(url)}: no answer within {TIMEOUT:g} s \(QIDO-RS", message), message
    assert within_bound(seconds), (message, seconds)


def test_c_store_to_a_node_that_never_answers(silent_server: int) -> None:
    node = f"dicom://ORTHANC@127.0.0.1:{silent_server}"
    start = time.monotonic()
    with pytest.raises(PacsError) as error:
        c_store([require(MR_FILE)], "127.0.0.1", silent_server, "ORTHANC", timeout=TIMEOUT, connect_timeout=3)
    seconds = time.monotonic() - start
    message = str(error.value)
    assert re.match(rf"{re.escape(node)}: no answer within {TIMEOUT:g} s \(C-STORE association", message), (
        message
    )
    assert "\n" not in message and within_bound(seconds), (message, seconds)


def test_c_store_to_a_node_that_never_accepts(unaccepting_server: int) -> None:
    node = f"dicom://ORTHANC@127.0.0.1:{unaccepting_server}"
    start = time.monotonic()
    with pytest.raises(PacsError) as error:
        c_store([require(MR_FILE)], "127.0.0.1", unaccepting_server, "ORTHANC", connect_timeout=TIMEOUT)
    seconds = time.monotonic() - start
    message = str(error.value)
    assert re.match(rf"{re.escape(node)}: no connection within {TIMEOUT:g} s", message), message
    assert within_bound(seconds), (message, seconds)


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_garbage_answers_are_one_line_naming_the_url(
    answer: str, garbage_server: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{garbage_server}/{answer}/dicom-web"
    code, err, _ = run_pacs(url, checkpoint, capsys, "--timeout", "5")
    line = one_error(err)
    assert code == 2 and url in line and STUDY in line, line


def test_garbage_instances_and_store_answers_are_one_line(
    garbage_server: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{garbage_server}/wado-garbage/dicom-web"
    code, err, _ = run_pacs(url, checkpoint, capsys, "--work", str(tmp_path / "work"))
    line = one_error(err)
    assert code == 2 and url in line and SERIES in line and "WADO-RS" in line, line
    pulled = tmp_path / "work" / "pulled"
    assert not pulled.exists() or not [p for p in pulled.rglob("*") if p.is_file()]
    with pytest.raises(PacsError) as error:
        DicomWebPacs(url, timeout=5).store([require(MR_FILE)])
    message = str(error.value)
    assert url in message and "STOW-RS" in message and "\n" not in message, message
    assert "Avasarala" not in message and "PGBM-002" not in message


def test_missing_weights_fail_before_contacting_the_pacs(
    silent_server: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{silent_server}/dicom-web"
    missing = tmp_path / "none.pt"
    code, err, seconds = run_pacs(url, missing, capsys, "--timeout", "30")
    line = one_error(err)
    assert code == 2 and line.startswith(f"error: {missing}: no trained weights"), line
    assert seconds < 10


def test_help_documents_the_timeouts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["pacs", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--connect-timeout S" in text and "--timeout S" in text
    assert "default 5" in text and "default 60" in text


@pytest.mark.parametrize("option", ["--study", "--series-uid"])
def test_uid_options_that_are_not_uids_are_one_line_before_any_request(
    option: str, silent_server: int, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{silent_server}/dicom-web"
    args = ["pacs", "--url", url, "--study", STUDY, "--bundle", str(BUNDLE), "--checkpoint", str(checkpoint)]
    args += [option, "../x\n1"]
    start = time.monotonic()
    assert main(args) == 2
    line = one_error(capsys.readouterr().err)
    assert line == f"error: {option} '../x\\n1': not a DICOM UID (digits and dots, at most 64 characters)"
    assert time.monotonic() - start < 10


def test_c_store_that_is_never_answered_after_the_association(tmp_path: Path) -> None:
    """A real DICOM node (pynetdicom) that accepts the association and never answers the C-STORE."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import MRImageStorage

    release = threading.Event()

    def never_answer(event: evt.Event) -> int:
        release.wait(30)
        return 0x0000

    node = AE(ae_title="SLOW")
    node.add_supported_context(MRImageStorage)
    server = node.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, never_answer)])
    port = server.server_address[1]
    start = time.monotonic()
    try:
        with pytest.raises(PacsError) as error:
            c_store([require(MR_FILE)], "127.0.0.1", port, "SLOW", timeout=TIMEOUT, connect_timeout=3)
    finally:
        seconds = time.monotonic() - start
        release.set()
        server.shutdown()
    message = str(error.value)
    expected = (
        rf"dicom://SLOW@127.0.0.1:{port}: no answer within {TIMEOUT:g} s \(C-STORE of MR Image Storage "
    )
    assert re.match(expected, message) and "\n" not in message, message
    assert within_bound(seconds), (message, seconds)
