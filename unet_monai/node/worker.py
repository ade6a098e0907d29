"""The node's worker: one job at a time, segment a settled series, then send its SEG.

A job goes ``receiving`` -> ``running`` -> ``sending`` -> ``done``, each step recorded before the next
begins (:mod:`unet_monai.node.queue`). The SEG is written (atomically) and its SOPInstanceUID recorded
before anything is sent, so a restart resends the same SEG and never makes a second one. A series that is
not an image series is ``skipped``, one that cannot be segmented ``failed``, each with a one-line reason.
A send that fails waits (``retry_seconds``, doubled each time up to ``retry_max_seconds``) and is tried
again; the job stays ``sending`` meanwhile, with the error and the next try in the record. A full disk
while segmenting is waited out the same way: the job goes back to ``receiving`` with the reason and its
next try, and runs again then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from unet_monai.dicom.selection import SelectionRules
from unet_monai.dicom.series import DicomSeriesError, shown
from unet_monai.io import error_line, is_disk_full
from unet_monai.node.queue import FINISHED, JobQueue

__all__ = ["WorkerSettings", "process_next", "public_url"]

logger = logging.getLogger(__name__)


@dataclass
class WorkerSettings:
    """What the worker needs: the bundle and its options, where SEGs go, and its timings (seconds)."""

    bundle: Path
    checkpoint: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    seg_type: str = "binary"
    rules: SelectionRules | None = None  # which series to segment, beside the default rule
    description: str | None = None  # a regex the SeriesDescription must match
    peer: tuple[str, int, str] | None = None  # C-STORE destination (host, port, AE title)
    stow_url: str | None = None  # STOW-RS destination
    aet: str = "UNET_MONAI"  # our AE title, as the calling AE of C-STOREs
    settle_seconds: float = 10.0
    series_timeout: float = 3600.0  # a series still receiving after this long fails ("never completes")
    retry_seconds: float = 10.0
    retry_max_seconds: float = 600.0
    send_timeout: float = 60.0

    def destinations(self) -> list[str]:
        """Where SEGs go, as shown in records and logs."""
        places = []
        if self.peer is not None:
            host, port, aet = self.peer
            places.append(f"dicom://{aet}@{host}:{port}")
        if self.stow_url is not None:
            places.append(public_url(self.stow_url))
        return places


def public_url(url: str) -> str:
    """``url`` without user name and password (what records and logs may show)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _segment(queue: JobQueue, job: dict[str, Any], settings: WorkerSettings) -> None:
    """Run the job's segmentation and record the outcome: sending (SEG written), skipped or failed."""
    from unet_monai.batch_inference import root_cause
    from unet_monai.dicom.infer import segment_dicom
    from unet_monai.dicom.selection import NoSeriesToSegment

    name = job["name"]
    with queue.update(name) as record:
        interrupted = record["state"] == "running"
        record.update(state="running", runs=record["runs"] + 1, reopen=False, started=time.time())
    if interrupted:
        logger.warning("series %s: its last run was interrupted; running it again", job["series_uid"])
    logger.info("series %s: segmenting %d instances", job["series_uid"], job["instances"])
    outcome: dict[str, Any]
    try:
        result = segment_dicom(
            settings.bundle,
            queue.series_folder(name),
            queue.output_folder(name),
            formats=("seg",),
            checkpoint=settings.checkpoint,
            overrides=dict(settings.overrides),
            seg_type=settings.seg_type,
            rules=settings.rules,
            description=settings.description,
        )
    except NoSeriesToSegment as error:
        outcome = {"state": "skipped", "reason": error_line(error)}
    except Exception as error:  # noqa: BLE001 - the worker survives any job; the record says what it was
        full = root_cause(error)  # MONAI wraps what a transform raises
        if is_disk_full(full):  # waited out: the series runs again once the back-off has passed
            attempts = job["attempts"] + 1
            wait = min(settings.retry_max_seconds, settings.retry_seconds * 2 ** (attempts - 1))
            reason = f"disk full while segmenting ({error_line(full)}); next try in {wait:.0f} s"
            outcome = {
                "state": "receiving",
                "reason": reason,
                "attempts": attempts,
                "next_try": time.time() + wait,
            }
        elif isinstance(error, (DicomSeriesError, ValueError, OSError)):
            outcome = {"state": "failed", "reason": error_line(error)}
        else:
            logger.debug("series %s failed", job["series_uid"], exc_info=True)
            outcome = {"state": "failed", "reason": error_line(error, with_type=True)}
    else:
        seg = Path(result["files"]["seg"])
        outcome = {
            "state": "sending",
            "seg_file": str(seg.relative_to(queue.where.root)),
            "seg_sop_instance_uid": result["seg_sop_instance_uid"],
            "seg_series_uid": result["seg_series_uid"],
            "labels": result["labels"],
            "delivered": [],
            "attempts": 0,
            "next_try": time.time(),
            "last_error": None,
        }
    with queue.update(name) as record:
        if record["reopen"]:  # instances came in while it ran: segment the whole series again
            record.update(state="receiving", reopen=False, reason=None)
            logger.info("series %s: new instances came during the run; it runs again", job["series_uid"])
            return
        record.update(outcome)
        record["finished"] = time.time() if outcome["state"] in FINISHED else None
    if outcome["state"] == "sending":
        logger.info("series %s: SEG %s written", job["series_uid"], outcome["seg_sop_instance_uid"])
    else:
        logger.warning("series %s %s: %s", job["series_uid"], outcome["state"], outcome["reason"])


def _senders(settings: WorkerSettings) -> list[tuple[str, Callable[[Path], list[str]]]]:
    """(destination, send) for each destination; ``send(file)`` returns the stored SOP Instance UIDs."""
    from unet_monai.dicom.pacs import DEFAULT_CONNECT_TIMEOUT, DicomWebPacs, c_store

    senders: list[tuple[str, Callable[[Path], list[str]]]] = []
    places = iter(settings.destinations())
    if settings.peer is not None:
        host, port, aet = settings.peer

        def by_c_store(path: Path) -> list[str]:
            return c_store(
                [path],
                host,
                port,
                aet,
                calling_aet=settings.aet,
                timeout=settings.send_timeout,
                connect_timeout=DEFAULT_CONNECT_TIMEOUT,
            ).stored

        senders.append((next(places), by_c_store))
    if settings.stow_url is not None:
        url = settings.stow_url

        def by_stow(path: Path) -> list[str]:
            return DicomWebPacs(url, timeout=settings.send_timeout, max_attempts=1).store([path]).stored

        senders.append((next(places), by_stow))
    return senders


def _send(queue: JobQueue, job: dict[str, Any], settings: WorkerSettings) -> None:
    """Send the job's SEG to each destination that does not have it yet; back off on failure."""
    from unet_monai.dicom.pacs import PacsError

    name, seg_uid = job["name"], job["seg_sop_instance_uid"]
    path = queue.where.root / job["seg_file"]
    for destination, send in _senders(settings):
        if destination in job["delivered"]:
            continue
        try:
            stored = send(path)
            if seg_uid not in stored:
                raise PacsError(f"{destination} did not confirm storing SEG {seg_uid}")
        except (PacsError, OSError, ValueError) as error:
            with queue.update(name) as record:
                attempts = record["attempts"] + 1
                wait = min(settings.retry_max_seconds, settings.retry_seconds * 2 ** (attempts - 1))
                record.update(attempts=attempts, next_try=time.time() + wait, last_error=error_line(error))
            logger.warning(
                "series %s: SEG %s not sent (try %d; next in %.0f s): %s",
                job["series_uid"],
                seg_uid,
                attempts,
                wait,
                error_line(error),
            )
            return
        with queue.update(name) as record:
            record["delivered"].append(destination)
            record["sends"] += 1
            job = record.copy()
        logger.info("series %s: SEG %s stored on %s", job["series_uid"], seg_uid, destination)
    with queue.update(name) as record:
        record.update(state="done", next_try=None, last_error=None, finished=time.time())
        if record["reopen"]:
            reopened = queue._reopened(record, time.time())  # noqa: SLF001 - the queue's own rule
            record.clear()
            record.update(reopened)
            logger.info("series %s: new instances came while sending; it runs again", job["series_uid"])


def _expire(queue: JobQueue, settings: WorkerSettings, now: float) -> None:
    """Fail the series that have been receiving for longer than ``series_timeout`` (never complete)."""
    for job in queue.where.read_jobs():
        waiting_for_disk = (job.get("next_try") or 0.0) > now
        if (
            job["state"] == "receiving"
            and not waiting_for_disk
            and now - job["first_received"] > settings.series_timeout
        ):
            with queue.update(job["name"]) as record:
                if record["state"] != "receiving":
                    continue
                reason = (
                    f"series {shown(record['series_uid'])} still receiving after "
                    f"{settings.series_timeout:g} s ({record['instances']} instances); never completed"
                )
                record.update(state="failed", reason=reason, finished=now)
            logger.warning("series %s failed: %s", job["series_uid"], reason)


def process_next(queue: JobQueue, settings: WorkerSettings) -> bool:
    """Do one step of the next due job (segment, or send); False when nothing was due."""
    now = time.time()
    _expire(queue, settings, now)
    job = queue.next_job(settings.settle_seconds, now)
    if job is None:
        return False
    if job["state"] == "sending":
        _send(queue, job, settings)
    else:
        _segment(queue, job, settings)
    return True
