"""The receiving AE: which associations it accepts, and its C-ECHO / C-STORE handlers.

Handlers are plain functions bound to their dependencies (no globals). They never raise: an
unexpected error becomes a failure status and a logged traceback, and the node keeps serving.
"""

from __future__ import annotations

import logging

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.net.receiver import StoreReceiver
from dicomnode.settings import NodeSettings
from dicomnode.status import Status

logger = logging.getLogger(__name__)

#: Every transfer syntax the node accepts and can decode (pydicom + pylibjpeg + pyjpegls).
ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


def handle_echo(event: Event) -> int:
    """C-ECHO: the node is alive."""
    return Status.SUCCESS


def handle_store(event: Event, receiver: StoreReceiver) -> int:
    """C-STORE: write the instance durably before answering success."""
    calling_ae = event.assoc.requestor.ae_title
    try:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        encoded = event.encoded_dataset(include_meta=True)
    except Exception as error:  # any decoding failure of a peer's bytes is "cannot understand"
        logger.warning("refused an undecodable dataset from %s: %s", calling_ae, error)
        return Status.CANNOT_UNDERSTAND
    try:
        return receiver.store(encoded, dataset, calling_ae)
    except Exception:
        logger.exception("unexpected error storing an instance from %s", calling_ae)
        return Status.PROCESSING_FAILURE


def _log_accepted(event: Event) -> None:
    requestor = event.assoc.requestor
    logger.info("association from %s (%s:%s) accepted", requestor.ae_title, requestor.address, requestor.port)


def _log_rejected(event: Event) -> None:
    requestor = event.assoc.requestor
    logger.warning(
        "association from %s (%s:%s) to %s rejected (calling AE title not allowed, wrong called AE title or too many associations)",
        requestor.ae_title,
        requestor.address,
        requestor.port,
        event.assoc.acceptor.ae_title,
    )


def _log_released(event: Event) -> None:
    logger.info("association from %s released", event.assoc.requestor.ae_title)


def _log_aborted(event: Event) -> None:
    logger.warning("association from %s aborted", event.assoc.requestor.ae_title)


def build_ae(settings: NodeSettings) -> AE:
    """The node's AE with every storage SOP class and the accepted transfer syntaxes."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.network_timeout = settings.network_timeout_seconds
    ae.acse_timeout = settings.network_timeout_seconds
    ae.dimse_timeout = settings.network_timeout_seconds
    ae.require_called_aet = True
    ae.require_calling_aet = list(settings.allowed_calling_ae_titles)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def start_receiver(settings: NodeSettings, receiver: StoreReceiver) -> ThreadedAssociationServer:
    """Start listening (non-blocking); stop with ``server.shutdown()``."""
    ae = build_ae(settings)
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [receiver]),
        (evt.EVT_ACCEPTED, _log_accepted),
        (evt.EVT_REJECTED, _log_rejected),
        (evt.EVT_RELEASED, _log_released),
        (evt.EVT_ABORTED, _log_aborted),
    ]
    server = ae.start_server((settings.bind_address, settings.port), block=False, evt_handlers=handlers)
    logger.info("listening as %s on %s:%d", settings.ae_title, settings.bind_address, settings.port)
    return server
