"""The listening socket: which connections get a thread, and stopping them all.

A peer outside ``node.allowed_peer_addresses`` is closed as soon as it is accepted (no TLS
handshake, nothing of it read). Each other connection gets its own thread, where the TLS
handshake runs with the network timeout (a client that connects and stays silent cannot stop
the node accepting anyone else) and then its :class:`~dicomnode.net.association.Association`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading

from dicomnode.net.association import AcceptorPolicy, Association, StoreHandler
from dicomnode.net.tls import describe

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_allowed(host: str, networks: tuple[Network, ...]) -> bool:
    """Whether ``host`` (as the socket reports it) is in one of ``networks``; an IPv4 peer of a
    dual-stack socket (``::ffff:10.1.2.3``) counts as its IPv4 address."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def listen(bind_address: str, port: int) -> socket.socket:
    """A listening TCP socket; ``::`` also takes IPv4 peers (dual stack)."""
    family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
    return socket.create_server(
        (bind_address, port), family=family, backlog=64, dualstack_ipv6=bind_address == "::" and socket.has_dualstack_ipv6()
    )


class AssociationServer:
    """Accepts connections on one port until :meth:`shutdown`."""

    def __init__(
        self,
        listener: socket.socket,
        policy: AcceptorPolicy,
        store: StoreHandler,
        max_associations: int,
        allowed_networks: tuple[Network, ...] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.listener = listener
        self.policy = policy
        self.store = store
        self.allowed_networks = allowed_networks
        self.ssl_context = ssl_context
        self.slots = threading.BoundedSemaphore(max_associations)
        self._live: dict[threading.Thread, socket.socket] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_forever, name="AcceptorServer", daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    @property
    def active_associations(self) -> list[threading.Thread]:
        """The connections being served (negotiating, associated or closing), one thread each."""
        with self._lock:
            return [thread for thread in self._live if thread.is_alive()]

    def shutdown(self) -> None:
        """Stop accepting, close every connection, and wait (briefly) for their threads."""
        self._stopping.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        self._acceptor.join(timeout=5)
        with self._lock:
            live = list(self._live.items())
        for thread, connection in live:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        for thread, _ in live:
            thread.join(timeout=5)

    def _accept_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, address = self.listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                logger.exception("accepting a connection failed; accepting again")
                self._stopping.wait(0.1)
                continue
            host = address[0]
            if self.allowed_networks and not peer_allowed(host, self.allowed_networks):
                logger.warning("connection from %s closed: address not in node.allowed_peer_addresses", host)
                connection.close()
                continue
            thread = threading.Thread(target=self._serve, args=(connection, address[:2]), name=f"Association-{host}", daemon=True)
            with self._lock:  # each thread takes itself out when it ends (_serve)
                self._live[thread] = connection
            thread.start()

    def _serve(self, connection: socket.socket, address: tuple[str, int]) -> None:
        try:
            if self.ssl_context is not None:
                connection = self._handshake(connection, address)
            if connection is not None:
                Association(connection, address, self.policy, self.slots, self.store).run()
        finally:
            with self._lock:
                self._live.pop(threading.current_thread(), None)

    def _handshake(self, connection: socket.socket, address: tuple[str, int]) -> ssl.SSLSocket | None:
        """The TLS connection once its handshake succeeded within the network timeout; None
        (logged, closed) when it failed."""
        assert self.ssl_context is not None
        wrapped = self.ssl_context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        with self._lock:  # shutdown() must close the socket that is in use now
            self._live[threading.current_thread()] = wrapped
        try:
            wrapped.settimeout(self.policy.network_timeout_seconds)
            wrapped.do_handshake()
            return wrapped
        except OSError as error:
            logger.warning("TLS handshake with %s:%s failed: %s", address[0], address[1], describe(error))
            wrapped.close()
            return None
