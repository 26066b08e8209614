"""DICOM upper-layer PDUs encoded by hand (PS3.8 9.3), for tests that talk to the node below
any DICOM library: to mutate them byte by byte, or to send what no library would."""

from __future__ import annotations

import socket
import struct

VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = b"1.2.840.10008.1.2"


def item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def pdu(kind: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBL", kind, 0, len(payload) if length is None else length) + payload


def associate_rq(
    called: bytes = b"TESTNODE",
    calling: bytes = b"FUZZPDU",
    contexts: tuple[tuple[int, bytes, tuple[bytes, ...]], ...] = ((1, VERIFICATION, (IMPLICIT_VR_LITTLE_ENDIAN,)),),
) -> bytes:
    """A valid A-ASSOCIATE-RQ proposing ``contexts`` (id, abstract syntax, transfer syntaxes),
    by default Verification in implicit VR little endian."""
    proposed = b"".join(
        item(0x20, bytes([context_id, 0, 0, 0]) + item(0x30, abstract) + b"".join(item(0x40, ts) for ts in transfers))
        for context_id, abstract, transfers in contexts
    )
    user = item(0x50, item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.826.0.1.3680043.8.498.6"))
    application_context = item(0x10, b"1.2.840.10008.3.1.1.1")
    titles = called.ljust(16) + calling.ljust(16)
    body = struct.pack(">HH", 1, 0) + titles + bytes(32) + application_context + proposed + user
    return pdu(0x01, body)


def read_pdu(connection: socket.socket) -> tuple[int, bytes]:
    """The next PDU the node sends: its type and body."""
    head = connection.recv(6, socket.MSG_WAITALL)
    assert len(head) == 6, f"the connection closed where a PDU was due ({head!r})"
    kind, _, length = struct.unpack(">BBL", head)
    body = connection.recv(length, socket.MSG_WAITALL) if length else b""
    assert len(body) == length, "a truncated PDU"
    return kind, body
