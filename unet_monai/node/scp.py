"""The node's DICOM Storage SCP (pynetdicom): which SOP classes it takes, whom it lets in, what it answers.

Accepted by presentation-context negotiation: every image storage SOP class pynetdicom knows (segmented
when a series of them completes) and the non-image classes a PACS routes along with images (SEG, SR, key
objects, presentation states, RT structure sets, registrations), which are stored and then skipped with
a reason. Other classes (waveforms, PDF, raw data, ...) get no presentation context: the sender cannot
send them. Verification (C-ECHO) is accepted too.

A C-STORE is answered with success only once the instance is on disk and queued
(:meth:`JobQueue.add_instance`). Otherwise the status says why, in its ErrorComment:

* ``0xA700`` (refused, out of resources): the queue is full (a new series while ``max_queue`` series are
  unfinished), or the disk is full; nothing of the instance is left;
* ``0x0110`` (processing failure): another disk error;
* ``0xC000`` (cannot understand): the data set has no SeriesInstanceUID or cannot be decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from unet_monai.dicom.series import shown
from unet_monai.io import error_line, is_disk_full
from unet_monai.node.queue import JobQueue, QueueFullError

__all__ = ["STATUS_FAILURE", "STATUS_OUT_OF_RESOURCES", "accepted_sop_classes", "make_ae"]

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_FAILURE = 0x0110
STATUS_CANNOT_UNDERSTAND = 0xC000

# Non-image storage classes a PACS sends along with a study: stored, then skipped with a reason.
STORED_AND_SKIPPED = (
    "Segmentation Storage",
    "SR Storage",
    "Key Object Selection Document Storage",
    "Presentation State Storage",
    "RT Structure Set Storage",
    "Spatial Registration Storage",
)


def accepted_sop_classes() -> list[str]:
    """The storage SOP classes the node negotiates: images, plus :data:`STORED_AND_SKIPPED`."""
    from pynetdicom import StoragePresentationContexts

    accepted = []
    for context in StoragePresentationContexts:
        name = context.abstract_syntax.name
        if "Image Storage" in name or any(name.endswith(kind) for kind in STORED_AND_SKIPPED):
            accepted.append(str(context.abstract_syntax))
    return accepted


def _status(code: int, comment: str) -> Dataset:
    """A C-STORE response status with an ErrorComment (LO: at most 64 characters)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def store_handler(queue: JobQueue) -> Any:
    """The EVT_C_STORE handler: the instance into ``queue``, the status as described in the module."""

    def handle(event: Any) -> int | Dataset:
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        calling = event.assoc.requestor.ae_title
        try:
            dataset = event.dataset
            header = {
                "series_uid": str(dataset.SeriesInstanceUID),
                "study_uid": str(dataset.get("StudyInstanceUID", "")),
                "modality": shown(dataset.get("Modality", "")),
                "calling_aet": calling,
            }
            data = event.encoded_dataset(include_meta=True)
        except Exception as error:  # noqa: BLE001 - whatever the sender's data set lacks: one status
            logger.warning(
                "C-STORE of %s from %s not understood (%s)", shown(sop_uid), calling, type(error).__name__
            )
            return _status(STATUS_CANNOT_UNDERSTAND, f"not understood: {type(error).__name__}")
        try:
            name, new = queue.add_instance(header, sop_uid, data)
        except QueueFullError as error:
            logger.warning("C-STORE of %s from %s refused: %s", shown(sop_uid), calling, error)
            return _status(STATUS_OUT_OF_RESOURCES, f"queue full ({queue.max_unfinished} unfinished series)")
        except OSError as error:
            logger.error("C-STORE of %s from %s failed: %s", shown(sop_uid), calling, error_line(error))
            if is_disk_full(error):
                return _status(STATUS_OUT_OF_RESOURCES, "disk full on the node")
            return _status(STATUS_FAILURE, f"disk error on the node: {getattr(error, 'strerror', '')}")
        logger.debug("stored %s of series %s (%s)", shown(sop_uid), shown(header["series_uid"]), name)
        if not new:
            logger.info(
                "instance %s of series %s was already stored", shown(sop_uid), shown(header["series_uid"])
            )
        return STATUS_SUCCESS

    return handle


def rejected_handler(allowed_aets: Sequence[str] | None) -> Any:
    """The EVT_REJECTED handler: one log line naming the calling AE title and address."""

    def handle(event: Any) -> None:
        requestor = event.assoc.requestor
        allowed = "any" if allowed_aets is None else ", ".join(allowed_aets)
        logger.warning(
            "association from AE %s at %s:%s rejected (called AE %s; accepted callers: %s)",
            shown(requestor.ae_title),
            requestor.address,
            requestor.port,
            shown(event.assoc.acceptor.ae_title),
            allowed,
        )

    return handle


def make_ae(aet: str, allowed_aets: Sequence[str] | None, timeout: float = 60.0) -> Any:
    """A pynetdicom AE that answers as ``aet``, only to ``allowed_aets`` (None: any calling AE)."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=aet)
    for attribute in ("acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, attribute, timeout)
    ae.require_called_aet = True
    if allowed_aets is not None:
        ae.require_calling_aet = list(allowed_aets)
    ae.add_supported_context(Verification)
    for sop_class in accepted_sop_classes():
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    return ae
