"""TLS contexts for DICOM over TLS (PS3.15 Annex B), for the receiver and the sender alike.

One place decides the protocol floor (TLS 1.2, as the BCP 195 profiles require) and how PEM
files are loaded, so that receiving and sending cannot drift apart. A file that does not load
raises :class:`TlsFileError` naming the configuration key it came from, so that the settings
can refuse it at start-up with the key's name. Private keys must not be encrypted: the node
runs unattended and has no one to type a pass phrase (protect the key by its file mode).
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsFileError(ValueError):
    """A certificate or key file that does not load; ``key`` is its configuration key's suffix
    (``tls_certificate`` or ``tls_ca_certificates``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def describe(error: OSError) -> str:
    """A TLS error in words: ``certificate verify failed: self-signed certificate``, not
    ``[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ... (_ssl.c:1006)``."""
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(error))
    return text or type(error).__name__


def _no_pass_phrase() -> bytes:
    """Answer an encrypted key's pass phrase prompt with nothing (loading then fails) instead
    of letting OpenSSL wait for one on the terminal."""
    return b""


def _load(
    context: ssl.SSLContext, certificate: Path | None, private_key: Path | None, ca_certificates: Path | None
) -> None:
    if ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=ca_certificates)
        except (ssl.SSLError, OSError) as error:
            raise TlsFileError("tls_ca_certificates", f"cannot load {ca_certificates}: {describe(error)}") from None
    if certificate is not None:
        try:
            context.load_cert_chain(certificate, private_key, password=_no_pass_phrase)
        except (ssl.SSLError, OSError) as error:
            raise TlsFileError(
                "tls_certificate",
                f"cannot load {certificate} with the private key {private_key} "
                f"(PEM, matching, key not encrypted): {describe(error)}",
            ) from None


def server_context(certificate: Path, private_key: Path, client_ca_certificates: Path | None = None) -> ssl.SSLContext:
    """The receiver's context; with ``client_ca_certificates`` every client must present a
    certificate signed by one of them (mutual TLS), without them no client certificate is asked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load(context, certificate, private_key, client_ca_certificates)
    if client_ca_certificates is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ClientContext(ssl.SSLContext):
    """A client context that remembers why TLS failed on its connection.

    pynetdicom wraps and connects the socket itself and only logs a failed handshake, so the
    sender would report a mere "cannot connect". ``failure`` keeps the reason in words, to
    follow "TLS " (one context per association). A TLS 1.3 server checks the client's certificate after the
    client considers the handshake done: its refusal arrives with the first read, which is
    why reads are watched too.
    """

    failure: str | None = None


class _WatchedSocket(ssl.SSLSocket):
    context: ClientContext

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as error:
            self.context.failure = f"handshake failed: {describe(error)}"
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as error:
            self.context.failure = f"failed after the handshake: {describe(error)}"
            raise


ClientContext.sslsocket_class = _WatchedSocket


def client_context(
    ca_certificates: Path | None = None, certificate: Path | None = None, private_key: Path | None = None
) -> ClientContext:
    """The sender's context: verifies the peer's certificate chain (against ``ca_certificates``,
    else the system's trust store) and its host name; presents ``certificate`` when given."""
    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = MINIMUM_VERSION
    if ca_certificates is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load(context, certificate, private_key, ca_certificates)
    return context
