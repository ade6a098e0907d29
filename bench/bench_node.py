"""The listening node's cost against segmenting the same series directly, measured in the same run.

A real Orthanc (loopback, the routing script ``docker/orthanc/route-to-node.lua``) receives ``--series``
MR series at once (real MSD hippocampus volumes written as DICOM, one study each) and routes each stable
series to ``unet-monai serve`` (a subprocess, the hippocampus bundle's shipped weights), which sends the
SEGs back by C-STORE. Figures:

- direct: ``segment_dicom`` on each series folder in this process (the work the node does per series,
  without queue, network or PACS), after one warm-up;
- node job: per series, from the job's start to its SEG confirmed stored in Orthanc (segmentation, the
  queue's records, the C-STORE), read from the node's job records;
- turnaround: from the moment the series were stored in Orthanc to the last SEG found in Orthanc, with
  the waits it includes (Orthanc's StableAge and the node's --settle-seconds) reported beside it, and
  each job's timeline (first / last instance received by the node, job started / finished).

``node_job_over_direct`` is the node's overhead per series as a ratio (1.0: none). The routing runs
twice: Orthanc started with ``TCP_NODELAY=1`` (as OPERATIONS.md recommends: DCMTK, Orthanc's DICOM
layer, then turns Nagle's algorithm off) and with ``TCP_NODELAY=0``; ``receive_nagle_over_nodelay`` is
the ratio of the node's receive time per instance.

    python bench/bench_node.py --series 4 --output bench/results/node.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

import nibabel as nib
import numpy as np
import pydicom
from machine import emit_json, machine_info, rounded

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.orthanc_server import free_port, orthanc_server  # noqa: E402
from unet_monai.dicom.infer import segment_dicom  # noqa: E402
from unet_monai.dicom.pacs import DicomWebPacs, PacsError  # noqa: E402
from unet_monai.dicom.write_series import write_series  # noqa: E402

BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
IMAGES = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus" / "imagesTr"
ROUTING_SCRIPT = REPO_ROOT / "docker" / "orthanc" / "route-to-node.lua"
STABLE_AGE = 1  # Orthanc's seconds without a new instance before it routes a series
SETTLE_SECONDS = 1.0  # the node's


def write_studies(count: int, folder: Path) -> list[list[Path]]:
    """``count`` hippocampus volumes as MR series, each in a study of its own."""
    series = []
    for number, image_path in enumerate(sorted(IMAGES.glob("hippocampus_*.nii.gz"))[:count]):
        image = nib.load(image_path)
        series.append(
            write_series(np.asarray(image.dataobj), image.affine, folder / f"s{number}", shuffle_seed=number)
        )
    return series


def time_direct(series: list[list[Path]], work: Path) -> list[float]:
    """Seconds of ``segment_dicom`` per series (after one untimed warm-up run)."""
    segment_dicom(BUNDLE, series[0][0].parent, work / "warm-up")
    seconds = []
    for number, files in enumerate(series):
        start = time.perf_counter()
        segment_dicom(BUNDLE, files[0].parent, work / f"direct{number}")
        seconds.append(time.perf_counter() - start)
    return seconds


def seg_count(pacs: DicomWebPacs, study_uids: list[str]) -> int:
    """How many of the studies hold a SEG series (QIDO-RS answers 'none' with an error)."""
    count = 0
    for uid in study_uids:
        try:
            count += len(pacs.find_series(uid, modality="SEG"))
        except PacsError:
            continue
    return count


def run_node(series: list[list[Path]], work: Path, timeout: float, tcp_nodelay: bool) -> dict:
    """Route every series through Orthanc to the node at once; the node's job seconds and the turnaround.
    ``tcp_nodelay``: Orthanc started with ``TCP_NODELAY=1`` (DCMTK turns Nagle's algorithm off) or ``0``."""
    node_port = free_port()
    settings = {
        "LuaScripts": [str(ROUTING_SCRIPT)],
        "DicomModalities": {"unet_monai_node": ["UNET_MONAI", "127.0.0.1", node_port]},
        "StableAge": STABLE_AGE,
    }
    store = work / f"store-{int(tcp_nodelay)}"
    with orthanc_server(settings=settings, tcp_nodelay=tcp_nodelay) as orthanc:
        command = [
            sys.executable,
            "-m",
            "unet_monai.cli",
            "serve",
            "--bundle",
            str(BUNDLE),
            "--store",
            str(store),
            "--port",
            str(node_port),
            "--allow-aet",
            orthanc.aet,
            "--peer",
            f"127.0.0.1:{orthanc.dicom_port}:{orthanc.aet}",
            "--settle-seconds",
            str(SETTLE_SECONDS),
        ]
        log = open(store.with_suffix(".log"), "wb")  # noqa: SIM115 - closed below
        node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        try:
            while not (store / "node.json").is_file():
                if node.poll() is not None:
                    raise RuntimeError(f"the node stopped: {store.with_suffix('.log').read_text()[-2000:]}")
                time.sleep(0.2)
            pacs = DicomWebPacs(orthanc.dicomweb_url)
            study_uids = [
                str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID) for files in series
            ]
            start = time.time()
            for files in series:
                pacs.store(files)
            stored = time.time()
            while seg_count(pacs, study_uids) < len(series):
                if time.time() - stored > timeout or node.poll() is not None:
                    raise RuntimeError(f"SEGs missing after {timeout:g} s; see {store.with_suffix('.log')}")
                time.sleep(0.2)
            finished = time.time()
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=60)
            log.close()
    jobs = [json.loads(path.read_text()) for path in sorted((store / "jobs").glob("*.json"))]
    keys = ("first_received", "last_received", "started", "finished")
    timeline = [{key: job[key] - stored for key in keys} for job in sorted(jobs, key=lambda j: j["started"])]
    receiving = sum(job["last_received"] - job["first_received"] for job in jobs)
    instances = sum(job["instances"] for job in jobs)
    return {
        "timeline_s": timeline,
        "receive_ms_per_instance": 1000 * receiving / max(1, instances - len(jobs)),
        "job_s": [job["finished"] - job["started"] for job in jobs if job["state"] == "done"],
        "store_in_orthanc_s": stored - start,
        "turnaround_s": finished - stored,
        "states": sorted(job["state"] for job in jobs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=4, help="series routed at once (default 4)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the SEGs")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-node-") as temporary:
        work = Path(temporary)
        series = write_studies(args.series, work / "series")
        direct = time_direct(series, work)
        node = run_node(series, work, args.timeout, tcp_nodelay=True)
        nagle = run_node(series, work, args.timeout, tcp_nodelay=False)
    waits = STABLE_AGE + SETTLE_SECONDS
    result = {
        "series": args.series,
        "slices_per_series": [len(files) for files in series],
        "direct_s_per_series": mean(direct),
        "node_job_s_per_series": mean(node["job_s"]),
        "node_job_over_direct": mean(node["job_s"]) / mean(direct),
        "turnaround_s": node["turnaround_s"],
        "turnaround_waits_s": waits,
        "turnaround_over_direct_total": node["turnaround_s"] / sum(direct),
        "receive_ms_per_instance": node["receive_ms_per_instance"],
        "orthanc_with_nagle": {
            "receive_ms_per_instance": nagle["receive_ms_per_instance"],
            "turnaround_s": nagle["turnaround_s"],
            "receive_nagle_over_nodelay": nagle["receive_ms_per_instance"] / node["receive_ms_per_instance"],
        },
        "store_in_orthanc_s": node["store_in_orthanc_s"],
        "timeline_s_after_stored": node["timeline_s"],
        "job_states": node["states"] + nagle["states"],
        "machine": machine_info(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }
    emit_json(rounded(result), args.output)


if __name__ == "__main__":
    main()
