"""What a node's store says: whether the node runs, and each job's state, read from disk only.

Works whether the node runs or not (job records are replaced atomically, so every read is whole).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from unet_monai.node.queue import STATES, StoreLocation, age, read_json

__all__ = ["node_status", "status_lines"]


def node_status(store: Path | str) -> dict[str, Any]:
    """``{"store", "running", "node", "counts", "jobs"}`` of the store (``node``: what node.json says)."""
    where = StoreLocation(Path(store).resolve())
    if not where.root.is_dir():
        raise FileNotFoundError(f"{where.root}: no such node store")
    jobs = where.read_jobs()
    counts = {state: sum(1 for job in jobs if job["state"] == state) for state in STATES}
    return {
        "store": str(where.root),
        "running": where.node_running(),
        "node": read_json(where.node),
        "counts": counts,
        "jobs": jobs,
    }


def _detail(job: dict[str, Any], now: float) -> str:
    state = job["state"]
    if state == "receiving":
        waiting = f"; {job['reason']}" if job.get("reason") else ""
        return f"last instance {age(job['last_received'], now)} ago{waiting}"
    if state == "running":
        return f"run {job['runs']} since {age(job.get('started'), now)}"
    if state == "sending":
        wait = max(0.0, (job["next_try"] or now) - now)
        tried = f"try {job['attempts']} failed: {job['last_error']}; " if job["attempts"] else ""
        return f"SEG {job['seg_sop_instance_uid']}: {tried}next try in {wait:.0f} s"
    if state == "done":
        places = ", ".join(job["delivered"]) or "kept in the store (no destination)"
        return f"SEG {job['seg_sop_instance_uid']} -> {places}"
    return job.get("reason") or ""


def status_lines(status: dict[str, Any]) -> list[str]:
    """The status as lines for a terminal (UIDs, counts and reasons only)."""
    now = time.time()
    node = status["node"] or {}
    if status["running"]:
        where = f"{node.get('host', '?')}:{node.get('port', '?')}"
        head = f"node {node.get('aet', '?')} running (pid {node.get('pid', '?')}) on {where}"
    else:
        head = "node not running"
    counts = ", ".join(f"{n} {state}" for state, n in status["counts"].items() if n) or "no jobs"
    lines = [f"{head}; store {status['store']}: {counts}"]
    for job in status["jobs"]:
        lines.append(
            f"{job['state']:<9} series {job['series_uid']} ({job['modality'] or '?'}, {job['instances']} "
            f"instances, study {job['study_uid']}): {_detail(job, now)}"
        )
    return lines
