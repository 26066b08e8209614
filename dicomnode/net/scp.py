"""The receiving AE: which connections and associations it accepts, and its C-ECHO / C-STORE handlers.

Handlers are plain functions bound to their dependencies (no globals). They never raise: an
unexpected error becomes a failure status and a logged traceback, and the node keeps serving.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading

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
from pynetdicom.utils import make_target

from dicomnode.net.receiver import StoreReceiver
from dicomnode.net.tls import describe, server_context
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
        list(dataset)  # pydicom converts values when first read: a damaged one must fail here, not while filing
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


def _time_out_reads(event: Event) -> None:
    """Give an accepted connection the network timeout, which pynetdicom sets only on sockets it connects.

    An accepted socket blocks: a peer that sent part of a PDU and then nothing held its thread
    and an association slot for as long as it kept the connection open. With the timeout, the
    read fails after ``network_timeout_seconds`` of silence and the connection is closed.
    """
    event.assoc.dul.socket.socket.settimeout(event.assoc.network_timeout)


#: How long pynetdicom's connection thread sleeps between looks at an idle socket (its default
#: is 1 ms). It looks again at least twice per C-STORE (for the request and to send the
#: answer), so its sleep was a third of the time one instance took on loopback; 0.1 ms costs
#: about a tenth of a core while an association is open and idle.
CONNECTION_POLL_SECONDS = 0.0001


def _poll_promptly(event: Event) -> None:
    """Give the connection's reading thread the node's shorter sleep (:data:`CONNECTION_POLL_SECONDS`)
    and send each PDU at once (``TCP_NODELAY``: a small answer must not wait for more to send)."""
    event.assoc.dul._run_loop_delay = CONNECTION_POLL_SECONDS
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _end_the_wait_for_a_request(event: Event) -> None:
    """A connection closed before its A-ASSOCIATE-RQ was read: stop waiting for one now.

    pynetdicom's acceptor thread waits the ACSE timeout (the network timeout) for a request
    that can no longer come, and counts against ``max_associations`` meanwhile: each port scan,
    TCP health check or garbage connection would hold a slot for a minute. An empty item ends
    the wait as its timeout would (the thread reads None as "no request", kills and closes).
    """
    if event.assoc.is_acceptor and event.assoc.requestor.primitive is None:
        event.assoc.dul.to_user_queue.put(None)


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


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_allowed(host: str, networks: tuple[_Network, ...]) -> bool:
    """Whether ``host`` (as the socket reports it) is in one of ``networks``; an IPv4 peer of a
    dual-stack socket (``::ffff:10.1.2.3``) counts as its IPv4 address."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's server with the node's connection checks, before any DICOM is read.

    A peer outside ``node.allowed_peer_addresses`` is closed as soon as it is accepted
    (socketserver's ``verify_request``): no TLS handshake, no A-ASSOCIATE, nothing of it is read.
    The TLS handshake runs in the connection's own thread with the network timeout, where
    pynetdicom would run it in the accepting thread without one: there a client that connects
    and stays silent would stop the node accepting anyone else.
    """

    def __init__(
        self, *args: object, allowed_networks: tuple[_Network, ...], handshake_timeout: float, **kwargs: object
    ) -> None:
        self.allowed_networks = allowed_networks
        self.handshake_timeout = handshake_timeout
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept without the TLS handshake (see :meth:`process_request_thread`)."""
        assert self.socket is not None
        return self.socket.accept()

    def verify_request(self, request: object, client_address: tuple[str, int] | str) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else client_address
        if not self.allowed_networks or peer_allowed(host, self.allowed_networks):
            return True
        logger.warning("connection from %s closed: address not in node.allowed_peer_addresses", host)
        return False

    def process_request_thread(  # type: ignore[override]
        self, request: socket.socket, client_address: tuple[str, int]
    ) -> None:
        if self.ssl_context is not None:
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(None)  # blocking, as pynetdicom's own accepted sockets are
            except OSError as error:
                logger.warning("TLS handshake with %s:%s failed: %s", *client_address[:2], describe(error))
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def start_receiver(settings: NodeSettings, receiver: StoreReceiver) -> NodeServer:
    """Start listening (non-blocking); stop with ``server.shutdown()``."""
    ae = build_ae(settings)
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [receiver]),
        (evt.EVT_ACCEPTED, _log_accepted),
        (evt.EVT_REJECTED, _log_rejected),
        (evt.EVT_RELEASED, _log_released),
        (evt.EVT_ABORTED, _log_aborted),
        (evt.EVT_CONN_OPEN, _time_out_reads),
        (evt.EVT_CONN_OPEN, _poll_promptly),
        (evt.EVT_CONN_CLOSE, _end_the_wait_for_a_request),
    ]
    context = None
    if settings.tls_certificate is not None and settings.tls_private_key is not None:
        context = server_context(settings.tls_certificate, settings.tls_private_key, settings.tls_ca_certificates)
    server = ae.make_server(
        (settings.bind_address, settings.port),
        ssl_context=context,
        evt_handlers=handlers,
        server_class=NodeServer,
        allowed_networks=settings.allowed_peer_addresses,
        handshake_timeout=settings.network_timeout_seconds,
    )
    # What ae.start_server(block=False) does, with the node's server class.
    threading.Thread(target=make_target(server.serve_forever), name="AcceptorServer", daemon=True).start()
    ae._servers.append(server)  # server.shutdown() removes itself from this list
    security = "plain TCP" if context is None else ("mutual TLS" if settings.tls_ca_certificates is not None else "TLS")
    logger.info("listening as %s on %s:%d (%s)", settings.ae_title, settings.bind_address, settings.port, security)
    return server
