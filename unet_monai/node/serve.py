"""``unet-monai serve``: check the options, start the node, run until SIGTERM / SIGINT, stop cleanly."""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet_monai.io import error_line

__all__ = ["run_node"]

logger = logging.getLogger(__name__)

AE_TITLE_LENGTH = 16


def _check_aet(option: str, value: str, job_error: type[Exception]) -> str:
    text = value.strip()
    if not text or len(text) > AE_TITLE_LENGTH or not text.isprintable() or "\\" in text:
        raise job_error(f"{option} {value!r}: an AE title is 1 to 16 printable characters without backslash")
    return text


def _log_to_stderr() -> None:
    """The node's own log lines on stderr (a bundle's logging.conf adds its root handler later)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("unet_monai")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def run_node(
    *,
    bundle: str,
    store: str,
    allow_aet: Sequence[str] | None,
    port: int,
    host: str,
    aet: str,
    peer: str | None,
    stow: str | None,
    settle_seconds: float,
    max_queue: int,
    series_timeout: float,
    retry_seconds: float,
    checkpoint: str | None,
    overrides: dict[str, Any],
    seg_type: str,
    job_error: type[Exception],
    rules: str | None = None,
    description: str | None = None,
) -> int:
    """Check the node's options (one ``job_error`` line if not), then serve until a signal. The bundle, its
    weights (``checkpoint``: None for the bundle's own) and the overrides are checked by the caller
    (:func:`unet_monai.jobs.serve`)."""
    from unet_monai.dicom.infer import parse_node
    from unet_monai.dicom.selection import check_description, load_rules
    from unet_monai.node.queue import NodeBusyError
    from unet_monai.node.server import Node, NodeSettings
    from unet_monai.node.worker import WorkerSettings

    if not allow_aet:
        raise job_error("--allow-aet: name the calling AE titles to accept (repeatable), or --allow-aet any")
    allowed = (
        None
        if [a.lower() for a in allow_aet] == ["any"]
        else [_check_aet("--allow-aet", a, job_error) for a in allow_aet]
    )
    aet = _check_aet("--aet", aet, job_error)
    for option, number in (
        ("--settle-seconds", settle_seconds),
        ("--series-timeout", series_timeout),
        ("--retry-seconds", retry_seconds),
    ):
        if not 0 < number < float("inf"):
            raise job_error(f"{option}: must be a positive number of seconds, got {number:g}")
    if max_queue < 1:
        raise job_error(f"--max-queue: must be at least 1, got {max_queue}")
    if not 0 <= port < 65536:
        raise job_error(f"--port: {port} is not a TCP port")
    try:
        destination = parse_node(peer) if peer else None
    except ValueError as error:
        raise job_error(f"--peer: {error}") from None
    if stow is not None and not stow.startswith(("http://", "https://")):
        raise job_error(f"--stow {stow!r}: a DICOMweb URL starts with http:// or https://")
    try:
        check_description(description)
        selection_rules = load_rules(rules) if rules is not None else None
    except ValueError as error:
        raise job_error(str(error)) from None
    root = Path(store).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise job_error(f"{root}: cannot make the store ({error_line(error)})") from None
    worker = WorkerSettings(
        bundle=Path(bundle).resolve(),
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        overrides=overrides,
        seg_type=seg_type,
        rules=selection_rules,
        description=description,
        peer=destination,
        stow_url=stow,
        aet=aet,
        settle_seconds=settle_seconds,
        series_timeout=series_timeout,
        retry_seconds=retry_seconds,
    )
    settings = NodeSettings(
        store=root, worker=worker, host=host, port=port, aet=aet, allowed_aets=allowed, max_queue=max_queue
    )
    _log_to_stderr()
    # The segmentation's scratch files (a patient's volume) stay in the store, emptied at each start.
    tempfile.tempdir = str(root / "tmp")
    node = Node(settings)
    try:
        node.start()
    except NodeBusyError as error:
        raise job_error(str(error)) from None
    except OSError as error:
        raise job_error(f"cannot listen on {host}:{port} ({error_line(error)})") from None
    stop = threading.Event()

    def on_signal(number: int, _frame: Any) -> None:
        logger.info("%s: stopping", signal.Signals(number).name)
        stop.set()

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
    print(f"listening as {aet} on {host}:{node.port}; store {root}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        finished = node.stop()
    if not finished:
        logger.warning("the running job was interrupted; it runs again at the next start")
    print("stopped", flush=True)
    return 0
