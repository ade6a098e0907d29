"""A real Orthanc PACS on loopback for tests: temporary storage, free ports, DICOMweb plugin enabled.

``with orthanc_server() as server:`` starts ``Orthanc`` with its own JSON configuration in a temporary
folder, waits until its REST API answers, yields an :class:`OrthancServer` (REST, DICOMweb and DICOM
addresses), then stops the process and removes the folder. :func:`find_orthanc` tells whether Orthanc
is installed (Debian: ``apt-get install orthanc orthanc-dicomweb``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb"
DICOMWEB_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins"))
ORTHANC_AET = "ORTHANC"
SCU_AET = "UNET_MONAI"


@dataclass(frozen=True)
class OrthancServer:
    """Addresses of a running test Orthanc."""

    rest_url: str  # e.g. http://127.0.0.1:8042 (no trailing slash)
    dicomweb_url: str  # rest_url + "/dicom-web"
    dicom_host: str
    dicom_port: int
    aet: str
    folder: Path  # configuration, storage, index and log
    log: Path


def find_orthanc() -> str | None:
    """The Orthanc executable, or None when it is not installed."""
    found = shutil.which("Orthanc")
    if found:
        return found
    for candidate in (Path("/usr/sbin/Orthanc"), Path("/usr/bin/Orthanc"), Path("/usr/local/bin/Orthanc")):
        if candidate.is_file():
            return str(candidate)
    return None


def find_dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's shared library, or None when it is not installed."""
    for folder in DICOMWEB_PLUGIN_DIRS:
        plugin = folder / "libOrthancDicomWeb.so"
        if plugin.is_file():
            return plugin
    return None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_config(folder: Path, http_port: int, dicom_port: int, plugin: Path) -> dict:
    """A minimal, fast-starting Orthanc configuration storing everything under ``folder``."""
    storage = str(folder / "storage")
    return {
        "Name": "unet-monai-test",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "StorageCompression": False,
        "SyncStorageArea": False,
        "Plugins": [str(plugin)],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "HttpThreadsCount": 8,
        "HttpCompressionEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "MetricsEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "DicomThreadsCount": 2,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": True,
        "DicomAssociationCloseDelay": 0,
        # Our C-STORE SCU, declared so that C-MOVE / C-ECHO from Orthanc would also reach it.
        "DicomModalities": {"unet_monai": [SCU_AET, "127.0.0.1", 11112]},
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "LoadPrivateDictionary": False,
        "StableAge": 1,
        "DeidentifyLogs": True,
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "Host": f"127.0.0.1:{http_port}",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


def _log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_up(process: subprocess.Popen, rest_url: str, log: Path, timeout: float) -> None:
    """Poll ``/system`` until it answers; RuntimeError with the log's tail on exit or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with code {process.returncode} at startup:\n{_log_tail(log)}")
        if _answers(f"{rest_url}/system"):
            with urllib.request.urlopen(f"{rest_url}/plugins", timeout=2.0) as response:
                plugins = json.load(response)
            if "dicom-web" not in plugins:
                raise RuntimeError(
                    f"Orthanc started without its DICOMweb plugin {plugins}:\n{_log_tail(log)}"
                )
            return
        time.sleep(0.05)
    raise RuntimeError(f"Orthanc did not answer {rest_url}/system within {timeout:.0f} s:\n{_log_tail(log)}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def orthanc_server(
    executable: str | None = None,
    plugin: Path | None = None,
    startup_timeout: float = 30.0,
    settings: dict | None = None,
    tcp_nodelay: bool = True,
) -> Iterator[OrthancServer]:
    """Run a private Orthanc on loopback for the ``with`` block; RuntimeError when it cannot start.

    ``settings`` replace top-level entries of :func:`orthanc_config` (e.g. ``LuaScripts``,
    ``DicomModalities``, ``StableAge``). ``tcp_nodelay``: the environment variable ``TCP_NODELAY`` that
    DCMTK (Orthanc's DICOM layer) reads to turn Nagle's algorithm off for its associations; with it
    off, each instance Orthanc sends waits for the receiver's delayed ACK (49 ms against 6 ms by
    DCMTK's storescu to the listening node, OPERATIONS.md)."""
    executable = executable or find_orthanc()
    plugin = plugin or find_dicomweb_plugin()
    if executable is None or plugin is None:
        raise RuntimeError(f"Orthanc or its DICOMweb plugin is not installed: {INSTALL_HINT}")
    folder = Path(tempfile.mkdtemp(prefix="orthanc-test-"))
    try:
        http_port, dicom_port = free_port(), free_port()
        while dicom_port == http_port:
            dicom_port = free_port()
        config = folder / "orthanc.json"
        content = orthanc_config(folder, http_port, dicom_port, plugin) | dict(settings or {})
        config.write_text(json.dumps(content, indent=2))
        log = folder / "orthanc.log"
        rest_url = f"http://127.0.0.1:{http_port}"
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [executable, "--no-jobs", str(config)],
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TCP_NODELAY": "1" if tcp_nodelay else "0"},
            )
        try:
            _wait_until_up(process, rest_url, log, startup_timeout)
            yield OrthancServer(
                rest_url=rest_url,
                dicomweb_url=f"{rest_url}/dicom-web",
                dicom_host="127.0.0.1",
                dicom_port=dicom_port,
                aet=ORTHANC_AET,
                folder=folder,
                log=log,
            )
        finally:
            _stop(process)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":  # manual check: start, print the addresses and startup time, stop
    start = time.perf_counter()
    with orthanc_server() as running:
        print(running, f"up in {time.perf_counter() - start:.2f} s")
