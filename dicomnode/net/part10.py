"""The DICOM file (PS3.10) a received data set is kept as: preamble, ``DICM``, file meta, data set.

The data set is written as it arrived, in the transfer syntax of its presentation context (a
deflated or compressed one stays so); the file meta group says which, and who sent it.
"""

from __future__ import annotations

import struct

from dicomnode import __version__

#: The node's implementation class UID (a 2.25 UUID-derived UID, fixed: PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = "2.25.268694657101818887333548722992580498586"
#: Its implementation version name (SH, at most 16 characters).
IMPLEMENTATION_VERSION_NAME = f"DECOVNODE_{__version__}"[:16]

_PREAMBLE = bytes(128) + b"DICM"


def even_padded(value: str, pad: bytes) -> bytes:
    """``value`` encoded to an even length (PS3.5 7.1.1): UIs pad with NUL, texts with a space."""
    encoded = value.encode("latin-1")
    return encoded + pad if len(encoded) % 2 else encoded


def _short(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, tag, vr, len(value)) + value


def file_prefix(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, ``DICM`` and the file meta group; the data set's bytes are appended to it."""
    elements = (
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
        + _short(0x0002, b"UI", even_padded(sop_class_uid, b"\0"))
        + _short(0x0003, b"UI", even_padded(sop_instance_uid, b"\0"))
        + _short(0x0010, b"UI", even_padded(transfer_syntax, b"\0"))
        + _short(0x0012, b"UI", even_padded(IMPLEMENTATION_CLASS_UID, b"\0"))
        + _short(0x0013, b"SH", even_padded(IMPLEMENTATION_VERSION_NAME, b" "))
        + _short(0x0016, b"AE", even_padded(source_ae, b" "))
    )
    group_length = _short(0x0000, b"UL", struct.pack("<L", len(elements)))
    return _PREAMBLE + group_length + elements
