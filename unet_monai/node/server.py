"""A listening DICOM node: the Storage SCP and the worker thread around one durable queue.

``Node(settings).start()`` takes the store (one node per store), recovers what a killed node left,
starts the SCP (:mod:`unet_monai.node.scp`) and the worker thread (:mod:`unet_monai.node.worker`);
``stop()`` closes the SCP and lets the worker end after its current step (an interrupted job runs again
at the next start).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_monai.io import error_line
from unet_monai.node.queue import JobQueue
from unet_monai.node.scp import make_ae, rejected_handler, store_handler
from unet_monai.node.worker import WorkerSettings, process_next

__all__ = ["Node", "NodeSettings"]

logger = logging.getLogger(__name__)


@dataclass
class NodeSettings:
    """Where the node listens, whom it accepts, how big its queue is, and what its worker does."""

    store: Path
    worker: WorkerSettings
    host: str = "127.0.0.1"
    port: int = 11112
    aet: str = "UNET_MONAI"
    allowed_aets: Sequence[str] | None = field(default=())  # None: any calling AE title
    max_queue: int = 10  # unfinished series; a new series beyond is refused (0xA700)
    poll_seconds: float = 0.5


class Node:
    """The SCP and the worker of one store; ``with Node(settings) as node:`` starts and stops it."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.queue = JobQueue(settings.store, settings.max_queue)
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = settings.port

    def start(self) -> Node:
        from pynetdicom import evt

        settings = self.settings
        for note in self.queue.open():
            logger.warning("%s", note)
        try:
            ae = make_ae(settings.aet, settings.allowed_aets)
            self._server = ae.start_server(
                (settings.host, settings.port),
                block=False,
                evt_handlers=[
                    (evt.EVT_C_STORE, store_handler(self.queue)),
                    (evt.EVT_REJECTED, rejected_handler(settings.allowed_aets)),
                ],
            )
        except BaseException:
            self.queue.close()
            raise
        self.port = int(self._server.server_address[1])
        self.queue.write_node_info(
            {
                "pid": os.getpid(),
                "host": settings.host,
                "port": self.port,
                "aet": settings.aet,
                "allowed_aets": "any" if settings.allowed_aets is None else list(settings.allowed_aets),
                "bundle": str(settings.worker.bundle),
                "destinations": settings.worker.destinations(),
                "settle_seconds": settings.worker.settle_seconds,
                "max_queue": settings.max_queue,
                "started": time.time(),
            }
        )
        self._worker = threading.Thread(target=self._work, name="unet-monai-node-worker", daemon=True)
        self._worker.start()
        logger.info(
            "DICOM node %s listening on %s:%d, store %s",
            settings.aet,
            settings.host,
            self.port,
            settings.store,
        )
        return self

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                busy = process_next(self.queue, self.settings.worker)
            except Exception as error:  # noqa: BLE001 - e.g. a full disk writing a record: try again later
                logger.error("worker: %s", error_line(error, with_type=True))
                busy = False
            if not busy:
                self._stopping.wait(self.settings.poll_seconds)

    def stop(self, wait_seconds: float = 30.0) -> bool:
        """Stop listening, let the worker finish its step (up to ``wait_seconds``); whether it did."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        finished = True
        if self._worker is not None:
            self._worker.join(wait_seconds)
            finished = not self._worker.is_alive()
            self._worker = None
        if finished:
            self.queue.close()
        return finished

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
