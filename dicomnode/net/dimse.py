"""DIMSE command sets (PS3.7 section 9.3, Annex E): read a request's, write a response's.

A command set is group 0000 in implicit VR little endian whatever the transfer syntax. The
node answers C-ECHO and C-STORE only, so it reads the few fields those need and writes their
responses; an element it does not know is skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dicomnode.net.part10 import even_padded

C_STORE_RQ, C_ECHO_RQ = 0x0001, 0x0030
#: A response's command field is its request's with bit 15 set.
RESPONSE_BIT = 0x8000
#: Command Data Set Type: no data set follows the command.
NO_DATA_SET = 0x0101

_AFFECTED_SOP_CLASS = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
_DATA_SET_TYPE = 0x00000800
_STATUS = 0x00000900
_AFFECTED_SOP_INSTANCE = 0x00001000

_ELEMENT = struct.Struct("<HHL")


class CommandError(ValueError):
    """A command set that cannot be read, or lacks a field its command needs."""


@dataclass(frozen=True)
class Command:
    """What the node reads of a request's command set."""

    command_field: int
    message_id: int
    has_data_set: bool
    affected_sop_class: str
    affected_sop_instance: str


def _us(value: bytes) -> int:
    if len(value) != 2:
        raise CommandError(f"a US value of {len(value)} bytes")
    return int.from_bytes(value, "little")


def _uid(value: bytes) -> str:
    """A UID as it was sent (latin-1 keeps any byte), at most 64 characters as PS3.5 allows."""
    uid = value.decode("latin-1").rstrip("\0 ")
    if len(uid) > 64:
        raise CommandError(f"a UID of {len(uid)} characters: {uid[:70]!r}")
    return uid


def parse_command(encoded: bytes | bytearray) -> Command:
    """The fields of an implicit VR little endian command set."""
    values: dict[int, bytes] = {}
    at, end = 0, len(encoded)
    while at < end:
        if at + _ELEMENT.size > end:
            raise CommandError("an element header runs past the end of the command set")
        group, element, length = _ELEMENT.unpack_from(encoded, at)
        at += _ELEMENT.size
        if group != 0x0000 or at + length > end:
            raise CommandError(f"element ({group:04X},{element:04X}) does not belong or does not fit in a command set")
        values[element] = bytes(encoded[at : at + length])
        at += length
    try:
        command_field = _us(values[_COMMAND_FIELD])
        message_id = _us(values[_MESSAGE_ID])
        data_set_type = _us(values[_DATA_SET_TYPE])
    except KeyError as missing:
        raise CommandError(f"the command set lacks ({missing.args[0]:08X})") from None
    return Command(
        command_field=command_field,
        message_id=message_id,
        has_data_set=data_set_type != NO_DATA_SET,
        affected_sop_class=_uid(values.get(_AFFECTED_SOP_CLASS, b"")),
        affected_sop_instance=_uid(values.get(_AFFECTED_SOP_INSTANCE, b"")),
    )


def _element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def response(request: Command, status: int) -> bytes:
    """The response command set to ``request`` with ``status`` (no data set follows)."""
    body = _element(_COMMAND_FIELD, struct.pack("<H", request.command_field | RESPONSE_BIT))
    body += _element(_MESSAGE_ID_BEING_RESPONDED_TO, struct.pack("<H", request.message_id))
    body += _element(_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET))
    body += _element(_STATUS, struct.pack("<H", status))
    if request.affected_sop_class:
        body = _element(_AFFECTED_SOP_CLASS, even_padded(request.affected_sop_class, b"\0")) + body
    if request.affected_sop_instance:
        body += _element(_AFFECTED_SOP_INSTANCE, even_padded(request.affected_sop_instance, b"\0"))
    return _element(0x00000000, struct.pack("<L", len(body))) + body
