"""Durable file writes: temporary file, fsync, atomic rename, fsync of the directory.

A reader (or a restarted node) sees either the whole file or none of it, never half of one.
"""

from __future__ import annotations

import os
import re
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_PLAIN_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def safe_name(uid: str) -> str:
    """A file-name component for a UID that cannot escape its directory.

    A well-formed UID (digits and dots, at most 64 characters) is used as it is, so operators
    recognise it; anything else (``../``, slashes, NUL, over-long values) becomes a hash of it.
    """
    if _PLAIN_UID.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, write: Callable[[BinaryIO], None], temp_dir: Path | None = None) -> int:
    """Write a file durably through ``write(handle)``; return its size in bytes.

    ``temp_dir`` must be on the same file system as ``path``. On any error (ENOSPC included)
    the temporary file is removed and the error re-raised: nothing half-written is left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = temp_dir or path.parent
    temp_dir.mkdir(parents=True, exist_ok=True)
    temp = temp_dir / f".{path.name}.{os.getpid()}.{id(write):x}.tmp"
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return size
