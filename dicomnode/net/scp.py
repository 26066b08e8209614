"""The receiving AE: what it accepts (titles, SOP classes, transfer syntaxes) and its C-STORE handler.

The handler never raises: an unexpected error becomes a failure status and a logged
traceback, and the node keeps serving.
"""

from __future__ import annotations

import functools
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
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicomnode.net.association import AcceptorPolicy
from dicomnode.net.dimse import Command
from dicomnode.net.part10 import ReceivedFile
from dicomnode.net.receiver import StoreReceiver
from dicomnode.net.server import AssociationServer, listen
from dicomnode.net.tls import server_context
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

#: Verification and every storage SOP class (pynetdicom's list of them).
ACCEPTED_ABSTRACT_SYNTAXES = frozenset(
    [str(Verification), *(str(context.abstract_syntax) for context in AllStoragePresentationContexts)]
)


def acceptor_policy(settings: NodeSettings) -> AcceptorPolicy:
    return AcceptorPolicy(
        ae_title=settings.ae_title,
        allowed_calling_ae_titles=frozenset(settings.allowed_calling_ae_titles),
        abstract_syntaxes=ACCEPTED_ABSTRACT_SYNTAXES,
        transfer_syntaxes=frozenset(str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES),
        max_pdu_bytes=settings.max_pdu_bytes,
        network_timeout_seconds=settings.network_timeout_seconds,
    )


def handle_store(receiver: StoreReceiver, received: ReceivedFile, command: Command, calling_ae: str) -> int:
    """C-STORE: ``received`` is the instance as a DICOM file; written durably before success is answered."""
    try:
        return receiver.receive(received, calling_ae)
    except Exception:
        logger.exception("unexpected error storing an instance from %s", calling_ae)
        return Status.PROCESSING_FAILURE


def start_receiver(settings: NodeSettings, receiver: StoreReceiver) -> AssociationServer:
    """Start listening (in a thread of its own); stop with ``server.shutdown()``."""
    context = None
    if settings.tls_certificate is not None and settings.tls_private_key is not None:
        context = server_context(settings.tls_certificate, settings.tls_private_key, settings.tls_ca_certificates)
    server = AssociationServer(
        listen(settings.bind_address, settings.port),
        acceptor_policy(settings),
        functools.partial(handle_store, receiver),
        max_associations=settings.max_associations,
        allowed_networks=settings.allowed_peer_addresses,
        ssl_context=context,
    )
    server.start()
    security = "plain TCP" if context is None else ("mutual TLS" if settings.tls_ca_certificates is not None else "TLS")
    logger.info("listening as %s on %s:%d (%s)", settings.ae_title, settings.bind_address, settings.port, security)
    return server
