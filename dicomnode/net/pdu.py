"""The DICOM upper layer's PDUs (PS3.8 section 9.3), as far as an acceptor needs them.

Reading: PDUs off a socket, each framed by its 6-byte header, its length bounded before
anything is allocated; an A-ASSOCIATE-RQ parsed into what negotiation looks at.
Writing: A-ASSOCIATE-AC/RJ, A-RELEASE-RP, A-ABORT and the P-DATA-TF of a small message.
Every malformed PDU raises :class:`PduError`; the association answers it with an A-ABORT.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)

#: The one application context name of DICOM (PS3.7 Annex A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

#: An A-ASSOCIATE-RQ is a few kB (128 contexts of a few UIDs each); this bounds a hostile one.
MAX_ASSOCIATE_RQ_BYTES = 1 << 20

#: Where "no maximum" (``max_pdu_bytes = 0``) stops: a hostile length must not be allocated.
MAX_UNBOUNDED_P_DATA_BYTES = 1 << 26

_HEADER = struct.Struct(">BBL")
_ITEM = struct.Struct(">BBH")


class PduError(ValueError):
    """A PDU that breaks PS3.8; ``reason`` is the A-ABORT reason to answer it with (PS3.8 9.3.8)."""

    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    INVALID_PARAMETER = 6

    def __init__(self, message: str, reason: int = INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class PeerClosed(ConnectionError):
    """The peer closed the connection (between PDUs or in the middle of one)."""


class PduReader:
    """Reads one connection's PDUs, as much of the stream at a time as the kernel has.

    A peer sends a CT slice as several P-DATA-TFs (dcmtk: 128 KiB each): read one by one, a
    header and then a body, that was a dozen receives an instance, and each return from one
    waits for the interpreter lock. Here each receive fills the free end of a buffer (1 MiB),
    often with several PDUs at once. A body is handed out as a view into the buffer and
    stays valid: the buffer is never written over, a full one is replaced by a new one (the
    unread bytes moved there), and the old one lives as long as a view of it.
    """

    #: The size of each buffer (a larger PDU gets a buffer of its own size).
    BUFFER_BYTES = 1 << 20

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self._buffer = bytearray()
        self._start = self._end = 0  # the unread bytes are _buffer[_start:_end]

    def read(self, max_p_data_bytes: int) -> tuple[int, memoryview]:
        """The next PDU's type and body (what follows the header).

        ``max_p_data_bytes`` bounds a P-DATA-TF (the maximum the node announced; 0: "no
        maximum", which still stops at :data:`MAX_UNBOUNDED_P_DATA_BYTES`), other PDUs are
        bounded by :data:`MAX_ASSOCIATE_RQ_BYTES`: a claimed length of 4 GiB is refused before
        a byte of it is read, not allocated.
        """
        self._receive(_HEADER.size)
        kind, _, length = _HEADER.unpack_from(self._buffer, self._start)
        if kind not in range(ASSOCIATE_RQ, ABORT + 1):
            raise PduError(f"unrecognised PDU type 0x{kind:02x}", PduError.UNRECOGNIZED_PDU)
        if kind == P_DATA_TF:
            limit = max_p_data_bytes or MAX_UNBOUNDED_P_DATA_BYTES
        else:
            limit = MAX_ASSOCIATE_RQ_BYTES
        if length > limit:
            raise PduError(f"a {length}-byte PDU of type 0x{kind:02x} exceeds the {limit}-byte maximum")
        self._receive(_HEADER.size + length)
        start = self._start + _HEADER.size
        self._start = start + length
        return kind, memoryview(self._buffer)[start : self._start]

    def _receive(self, count: int) -> None:
        """Receive until ``count`` bytes are unread (the connection's timeout applies to each receive)."""
        unread = self._end - self._start
        if unread >= count:
            return
        if self._start + count > len(self._buffer):  # no room left: the unread bytes move to a new buffer
            buffer = bytearray(max(count, self.BUFFER_BYTES))
            buffer[:unread] = memoryview(self._buffer)[self._start : self._end]
            self._buffer, self._start, self._end = buffer, 0, unread
        view = memoryview(self._buffer)
        while self._end - self._start < count:
            got = self.connection.recv_into(view[self._end :])
            if not got:
                raise PeerClosed(f"connection closed with {count - (self._end - self._start)} of {count} bytes unread")
            self._end += got


@dataclass(frozen=True)
class ProposedContext:
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AssociateRequest:
    """What the node looks at in an A-ASSOCIATE-RQ."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    #: Which software the requestor is (for the log).
    implementation_class_uid: str = ""


def _uid(value: bytes | bytearray) -> str:
    try:
        return bytes(value).decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        raise PduError(f"a UID that is not ASCII: {bytes(value)[:64]!r}") from None


def _ae_title(value: bytes | bytearray) -> str:
    try:
        return bytes(value).decode("ascii").strip(" \0")
    except UnicodeDecodeError:
        raise PduError(f"an AE title that is not ASCII: {bytes(value)!r}") from None


def _items(body: bytes | bytearray | memoryview, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
    """The (type, value) items between ``start`` and ``end``; each must fit."""
    view, at = memoryview(body), start
    while at < end:
        if at + _ITEM.size > end:
            raise PduError("an item header runs past the end of its PDU")
        kind, _, length = _ITEM.unpack_from(body, at)
        at += _ITEM.size
        if at + length > end:
            raise PduError(f"item 0x{kind:02x} claims {length} bytes past the end of its PDU")
        yield kind, view[at : at + length]
        at += length


def _presentation_context(value: memoryview) -> ProposedContext:
    if len(value) < 4:
        raise PduError("a presentation context item shorter than its fixed fields")
    abstract, transfers = None, []
    for kind, sub in _items(value, 4, len(value)):
        if kind == 0x30:
            if abstract is not None:
                raise PduError("a presentation context with two abstract syntaxes")
            abstract = _uid(sub)
        elif kind == 0x40:
            transfers.append(_uid(sub))
        else:
            raise PduError(f"sub-item 0x{kind:02x} in a presentation context")
    if abstract is None or not transfers:
        raise PduError("a presentation context without an abstract syntax or a transfer syntax")
    return ProposedContext(value[0], abstract, tuple(transfers))


def parse_associate_rq(body: bytes | bytearray | memoryview) -> AssociateRequest:
    """An A-ASSOCIATE-RQ's body (after the PDU header) as an :class:`AssociateRequest`."""
    if len(body) < 68:
        raise PduError(f"an A-ASSOCIATE-RQ of {len(body)} bytes is shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    application_context, contexts, implementation, user_information = "", [], "", False
    for kind, value in _items(body, 68, len(body)):
        if kind == 0x10:
            application_context = _uid(value)
        elif kind == 0x20:
            contexts.append(_presentation_context(value))
        elif kind == 0x50:
            user_information = True
            for sub_kind, sub in _items(value, 0, len(value)):
                if sub_kind == 0x51 and len(sub) != 4:
                    raise PduError("a maximum length sub-item that is not 4 bytes")
                if sub_kind == 0x52:
                    implementation = _uid(sub)
                # The requestor's maximum length does not matter: the node's answers are a
                # few hundred bytes. Other sub-items (version name, asynchronous operations,
                # role selection, extended negotiation, user identity) go unanswered: the
                # defaults apply.
        else:
            raise PduError(f"item 0x{kind:02x} in an A-ASSOCIATE-RQ")
    if not application_context or not user_information:
        raise PduError("an A-ASSOCIATE-RQ without an application context or user information")
    return AssociateRequest(
        protocol_version=version,
        called_ae=_ae_title(body[4:20]),
        calling_ae=_ae_title(body[20:36]),
        application_context=application_context,
        contexts=tuple(contexts),
        implementation_class_uid=implementation,
    )


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, 0, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return _HEADER.pack(kind, 0, len(body)) + body


def _padded_ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)[:16]


@dataclass(frozen=True)
class ContextAnswer:
    """The acceptor's answer to one proposed context (PS3.8 9.3.3.2: 0 accepted, 3 abstract
    syntax not supported, 4 no transfer syntax supported)."""

    context_id: int
    result: int
    transfer_syntax: str

    ACCEPTED = 0
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


def associate_ac(
    request: AssociateRequest,
    answers: list[ContextAnswer],
    max_pdu_bytes: int,
    implementation_class_uid: str,
    implementation_version: str,
) -> bytes:
    """The A-ASSOCIATE-AC for ``request`` (the called and calling titles are echoed back)."""
    fixed = struct.pack(">HH", 1, 0) + _padded_ae(request.called_ae) + _padded_ae(request.calling_ae) + bytes(32)
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for answer in answers:
        transfer = _item(0x40, answer.transfer_syntax.encode())
        items.append(_item(0x21, struct.pack(">BBBB", answer.context_id, 0, answer.result, 0) + transfer))
    user = (
        _item(0x51, struct.pack(">L", max_pdu_bytes))
        + _item(0x52, implementation_class_uid.encode())
        + _item(0x55, implementation_version.encode()[:16])
    )
    items.append(_item(0x50, user))
    return _pdu(ASSOCIATE_AC, fixed + b"".join(items))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent, 2 transient."""
    return _pdu(ASSOCIATE_RJ, struct.pack(">BBBB", 0, result, source, reason))


def release_rp() -> bytes:
    return _pdu(RELEASE_RP, bytes(4))


def abort(reason: int = 0) -> bytes:
    """An A-ABORT from the service provider (source 2) with ``reason`` (PS3.8 9.3.8)."""
    return _pdu(ABORT, struct.pack(">BBBB", 0, 0, 2, reason))


def p_data(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF holding a whole command set in one last-fragment PDV."""
    pdv = struct.pack(">LBB", len(command) + 2, context_id, 0x03) + command
    return _pdu(P_DATA_TF, pdv)


#: A PDV's message control header: bit 0 set for a command, bit 1 for the last fragment.
COMMAND_BIT, LAST_BIT = 0x01, 0x02


def pdvs(body: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """The (context id, control header, value) PDVs of a P-DATA-TF body."""
    view, at, end = memoryview(body), 0, len(body)
    if not end:
        raise PduError("a P-DATA-TF without a PDV")
    while at < end:
        if at + 6 > end:
            raise PduError("a PDV header runs past the end of its P-DATA-TF")
        length, context_id, control = struct.unpack_from(">LBB", body, at)
        if length < 2 or at + 4 + length > end:
            raise PduError(f"a PDV claims {length} bytes where its P-DATA-TF holds {end - at - 4}")
        yield context_id, control, view[at + 6 : at + 4 + length]
        at += 4 + length
