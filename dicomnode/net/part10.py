"""The DICOM file (PS3.10) a received data set is kept as: preamble, ``DICM``, file meta, data set.

The data set is written as it arrived, in the transfer syntax of its presentation context (a
deflated or compressed one stays so); the file meta group says which, and who sent it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dicomnode import __version__
from dicomnode.net.elements import data_set_start

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


@dataclass(frozen=True)
class ReceivedFile:
    """One received instance as the DICOM file it is kept as: its prefix (:func:`file_prefix`)
    and its data set as the fragments it arrived in, not joined: the durable write takes them
    as they are (one ``writev``), and a data set sent in one fragment is never copied."""

    transfer_syntax: str
    prefix: bytes | memoryview
    fragments: tuple[bytes | memoryview, ...]

    @classmethod
    def from_file(cls, encoded: bytes) -> ReceivedFile:
        """A whole DICOM file (read back from disk, or written by a test) split the same way;
        raises :class:`~dicomnode.net.elements.ElementError` for a file without a meta group."""
        transfer_syntax, start = data_set_start(encoded)
        view = memoryview(encoded)
        return cls(transfer_syntax, view[:start], (view[start:],))

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return len(self.prefix) + sum(len(fragment) for fragment in self.fragments)

    def parts(self) -> list[bytes | memoryview]:
        """The file's bytes in order: the prefix, then the data set's fragments."""
        return [self.prefix, *self.fragments]

    def data_set(self) -> bytes | memoryview:
        """The data set's bytes in one piece (joined only when it came in several fragments)."""
        return self.fragments[0] if len(self.fragments) == 1 else b"".join(self.fragments)
