"""The listening node's durable queue: received instances and one job record per series, on disk.

Layout under the store folder::

    node.lock                        held (flock) by the one node that serves this store
    node.json                        what the running node listens on (written at start)
    incoming/<series>/<sop>.dcm      received instances, as received (file meta + data set)
    jobs/<series>.json               one job record per series
    output/<series>/<series>_seg.dcm the SEG made for it
    tmp/                             the segmentation's scratch folder (emptied at start)

``<series>`` / ``<sop>`` are the UIDs made safe (:func:`unet_monai.io.safe_name`; a UID that safe_name
changes also gets a hash of itself, so two UIDs never share a name). Every file is written atomically
(hidden temporary + fsync + ``os.replace``, :func:`unet_monai.io.atomic_output`), so a kill -9 at any
moment leaves each file whole or absent, never half-written.

A job's ``state``:

* ``receiving``: instances come in; ready once none came for ``settle_seconds`` (and, after a full disk
  while segmenting, once ``next_try`` has passed);
* ``running``: being segmented (found so at start: the node was killed; it runs again);
* ``sending``: the SEG is written and its SOPInstanceUID recorded; sent to each destination not yet in
  ``delivered``; a failed send waits ``next_try`` (back-off) and stays here; after a restart the SAME
  file is sent again (same SOPInstanceUID: a PACS keeps one instance);
* ``done`` / ``skipped`` (not an image series) / ``failed`` (with ``reason``): finished, never re-run or
  re-sent. An instance with a new SOP Instance UID re-opens a finished series (it changed); the same
  instances sent again re-open only a failed one (the operator's retry), never a done or skipped one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_monai.io import PARTIAL_PREFIX, atomic_output, safe_name, write_json

__all__ = [
    "FINISHED",
    "UNFINISHED",
    "JobQueue",
    "NodeBusyError",
    "QueueFullError",
    "StoreLocation",
    "uid_name",
]

UNFINISHED = ("receiving", "running", "sending")
FINISHED = ("done", "skipped", "failed")
STATES = UNFINISHED + FINISHED


class QueueFullError(RuntimeError):
    """A new series was refused: the queue holds its maximum of unfinished jobs."""


class NodeBusyError(RuntimeError):
    """Another node process serves this store already (it holds ``node.lock``)."""


def uid_name(uid: str) -> str:
    """A file name for a UID: the UID itself when it is safe, else its safe form plus a short hash."""
    name = safe_name(uid, max_length=80)
    if name != uid:
        name = f"{name}-{hashlib.sha256(uid.encode('utf-8', 'replace')).hexdigest()[:12]}"
    return name


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (a temporary file of :func:`atomic_output`); tests make it fail."""
    with open(path, "wb") as stream:
        stream.write(data)


@dataclass(frozen=True)
class StoreLocation:
    """The folders of a store."""

    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def lock(self) -> Path:
        return self.root / "node.lock"

    @property
    def node(self) -> Path:
        return self.root / "node.json"

    def job_file(self, name: str) -> Path:
        return self.jobs / f"{name}.json"

    def read_jobs(self) -> list[dict[str, Any]]:
        """Every job record, oldest first (records are replaced atomically: each read is whole)."""
        jobs = []
        for path in sorted(self.jobs.glob("*.json")) if self.jobs.is_dir() else []:
            try:
                jobs.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # removed meanwhile, or not ours
        return sorted(jobs, key=lambda job: job.get("first_received", 0.0))

    def node_running(self) -> bool:
        """Whether a node process holds this store's lock right now."""
        if not self.lock.is_file():
            return False
        with open(self.lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False


class JobQueue:
    """The queue of one node: instances and job records under ``store``, guarded by a lock per process
    (C-STORE handlers and the worker run in threads) and ``node.lock`` between processes."""

    def __init__(self, store: Path | str, max_unfinished: int = 10) -> None:
        self.where = StoreLocation(Path(store).resolve())
        self.max_unfinished = max_unfinished
        self._lock = threading.RLock()
        self._lock_handle: Any = None

    # -- start / stop ------------------------------------------------------------------------------

    def open(self) -> list[str]:
        """Take the store (NodeBusyError when another node has it), remove what a killed node left half
        done (temporary files, scratch), and make records for instances written just before a kill.
        Returns one log line per thing recovered."""
        where = self.where
        for folder in (where.incoming, where.jobs, where.output, where.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        handle = open(where.lock, "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise NodeBusyError(
                f"{where.root}: another node serves this store (it holds {where.lock})"
            ) from None
        self._lock_handle = handle
        return self._recover()

    def close(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def _recover(self) -> list[str]:
        where = self.where
        notes = []
        for partial in where.root.rglob(f"{PARTIAL_PREFIX}*"):
            partial.unlink(missing_ok=True)
            notes.append(f"removed the half-written {partial}")
        for leftover in where.tmp.iterdir():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        for folder in sorted(p for p in where.incoming.iterdir() if p.is_dir()):
            if where.job_file(folder.name).is_file():
                continue
            header = self._first_header(folder)
            if header is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            now = time.time()
            self._save(self._new_job(folder.name, header, now) | {"instances": self._count(folder.name)})
            notes.append(f"series {header['series_uid']}: instances without a job record, queued")
        for job in self.where.read_jobs():
            count = self._count(job["name"])
            if job["state"] in FINISHED and count != job["instances"]:
                # an instance written just before a kill, its record not: the series changed
                with self._lock:
                    self._save(self._reopened(job, time.time()) | {"instances": count})
                notes.append(
                    f"series {job['series_uid']}: {count - job['instances']} instance(s) more, runs again"
                )
            elif job["state"] == "running":
                notes.append(f"series {job['series_uid']}: interrupted while running, runs again")
            elif job["state"] == "sending":
                with self._lock:
                    self._save(job | {"next_try": time.time()})
                notes.append(
                    f"series {job['series_uid']}: SEG {job['seg_sop_instance_uid']} not yet sent, resent"
                )
        return notes

    @staticmethod
    def _first_header(folder: Path) -> dict[str, str] | None:
        import pydicom

        for path in sorted(folder.glob("*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                return {
                    "series_uid": str(ds.SeriesInstanceUID),
                    "study_uid": str(ds.get("StudyInstanceUID", "")),
                    "modality": str(ds.get("Modality", "")),
                    "calling_aet": "",
                }
            except Exception:  # noqa: BLE001, S112 - an unreadable file: try the next
                continue
        return None

    # -- records -----------------------------------------------------------------------------------

    @staticmethod
    def _new_job(name: str, header: dict[str, str], now: float) -> dict[str, Any]:
        return {
            "name": name,
            "series_uid": header["series_uid"],
            "study_uid": header["study_uid"],
            "modality": header["modality"],
            "calling_aet": header["calling_aet"],
            "state": "receiving",
            "reason": None,
            "instances": 0,
            "first_received": now,
            "last_received": now,
            "updated": now,
            "runs": 0,
            "reopen": False,
            "seg_file": None,
            "seg_sop_instance_uid": None,
            "seg_series_uid": None,
            "delivered": [],
            "sends": 0,
            "attempts": 0,
            "next_try": None,
            "last_error": None,
            "previous": [],
        }

    def _save(self, job: dict[str, Any]) -> dict[str, Any]:
        job["updated"] = time.time()
        write_json(self.where.job_file(job["name"]), job)
        return job

    def job(self, name: str) -> dict[str, Any] | None:
        path = self.where.job_file(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def _count(self, name: str) -> int:
        folder = self.where.incoming / name
        return sum(1 for p in folder.glob("*.dcm")) if folder.is_dir() else 0

    def unfinished(self) -> int:
        return sum(1 for job in self.where.read_jobs() if job["state"] in UNFINISHED)

    @contextlib.contextmanager
    def update(self, name: str) -> Iterator[dict[str, Any]]:
        """Read job ``name``, let the caller change it, and write it back (atomically, under the lock)."""
        with self._lock:
            job = self.job(name)
            if job is None:
                raise KeyError(name)
            yield job
            self._save(job)

    # -- receiving ---------------------------------------------------------------------------------

    def add_instance(self, header: dict[str, str], sop_uid: str, data: bytes) -> tuple[str, bool]:
        """Store one received instance (``data``: the file, meta included) and queue its series.

        ``header``: series_uid, study_uid, modality, calling_aet. Returns (job name, whether the instance
        was new). QueueFullError for a new (or re-opened) series when the queue is full; OSError when the
        disk refuses: then neither the instance nor a changed record is left behind.
        """
        name = uid_name(header["series_uid"])
        folder = self.where.incoming / name
        path = folder / f"{uid_name(sop_uid)}.dcm"
        with self._lock:
            job = self.job(name)
            exists = path.is_file()
            if exists and (job is None or job["state"] not in ("receiving", "failed")):
                return name, False  # the same instance again: a done / skipped series stays so
            opens = job is None or job["state"] in FINISHED
            if opens and self.unfinished() >= self.max_unfinished:
                raise QueueFullError(
                    f"queue full: {self.max_unfinished} unfinished series, "
                    f"series {header['series_uid']} refused"
                )
            if not exists:
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_output(path) as temporary:
                    _write_file(temporary, data)
            now = time.time()
            try:
                if job is None:
                    job = self._new_job(name, header, now)
                elif job["state"] in FINISHED:
                    job = self._reopened(job, now)
                elif job["state"] in ("running", "sending"):
                    job["reopen"] = True
                job["last_received"] = now
                job["instances"] = self._count(name)
                self._save(job)
            except BaseException:
                if not exists:
                    path.unlink(missing_ok=True)
                raise
        return name, not exists

    def _reopened(self, job: dict[str, Any], now: float) -> dict[str, Any]:
        """A finished job whose series got a new instance: receiving again (its outcome kept in
        ``previous``)."""
        kept = {key: job[key] for key in ("state", "reason", "seg_sop_instance_uid", "delivered", "updated")}
        fresh = self._new_job(job["name"], job, now)
        fresh["runs"] = job["runs"]
        fresh["sends"] = job["sends"]
        fresh["previous"] = [*job.get("previous", []), kept][-5:]
        return fresh

    # -- the worker's side -------------------------------------------------------------------------

    def next_job(self, settle_seconds: float, now: float | None = None) -> dict[str, Any] | None:
        """The job to work on now: an interrupted run first, then a send that is due, then the series
        whose last instance is oldest among those settled (and not waiting out a full disk); None when
        nothing is due."""
        now = time.time() if now is None else now
        jobs = self.where.read_jobs()
        for state, due in (
            ("running", lambda job: True),
            ("sending", lambda job: (job["next_try"] or 0.0) <= now),
            (
                "receiving",
                lambda job: (
                    now - job["last_received"] >= settle_seconds and (job.get("next_try") or 0.0) <= now
                ),
            ),
        ):
            ready = [job for job in jobs if job["state"] == state and due(job)]
            if ready:
                return min(ready, key=lambda job: job["last_received"])
        return None

    def series_folder(self, name: str) -> Path:
        return self.where.incoming / name

    def output_folder(self, name: str) -> Path:
        return self.where.output / name

    def write_node_info(self, info: dict[str, Any]) -> None:
        write_json(self.where.node, info)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def age(seconds_since: float | None, now: float | None = None) -> str:
    """``12 s`` / ``3 min`` / ``2 h`` since a time stamp."""
    if seconds_since is None:
        return "-"
    elapsed = max(0.0, (time.time() if now is None else now) - seconds_since)
    if elapsed < 120:
        return f"{elapsed:.0f} s"
    if elapsed < 7200:
        return f"{elapsed / 60:.0f} min"
    return f"{elapsed / 3600:.1f} h"
