"""Durable file writes: temporary file, fsync, atomic rename, fsync of the directory.

A reader (or a restarted node) sees either the whole file or none of it, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sqlite3
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


def out_of_space(error: BaseException | None) -> BaseException | None:
    """The error in ``error``'s chain that says the disk (or the user's quota) is full, if any.

    SQLite says it in words; pydicom re-raises a writer's OSError without its errno (and with
    a traceback in its message), so the original is the one worth logging.
    """
    while error is not None:
        if isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error):
            return error
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        error = error.__cause__ or error.__context__
    return None


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


#: Modes of the node's own state (received instances, results, the index): its user only,
#: whatever the umask (a node started by hand inherits the shell's, often 022).
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700


def make_directories(directory: Path, mode: int = PRIVATE_DIRECTORY_MODE) -> None:
    """``mkdir -p`` where every directory created gets ``mode`` (``Path.mkdir`` gives the
    parents it creates the default mode); existing directories are left as they are."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for created in reversed(missing):
        try:
            created.mkdir(mode=mode)
        except FileExistsError:
            pass  # another thread made it meanwhile


def write_atomically(
    path: Path, write: Callable[[BinaryIO], None], temp_dir: Path | None = None, *, private: bool = True
) -> int:
    """Write a file durably through ``write(handle)``; return its size in bytes.

    ``temp_dir`` must be on the same file system as ``path``. On any error (ENOSPC included)
    the temporary file is removed and the error re-raised: nothing half-written is left.
    ``private`` files and the directories made for them are the node user's alone; otherwise
    (a folder destination other programs read) the umask decides.
    """
    file_mode, directory_mode = (PRIVATE_FILE_MODE, PRIVATE_DIRECTORY_MODE) if private else (0o666, 0o777)
    make_directories(path.parent, directory_mode)
    temp_dir = temp_dir or path.parent
    make_directories(temp_dir, directory_mode)
    temp = temp_dir / f".{path.name}.{os.getpid()}.{id(write):x}.tmp"
    try:
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode), "wb") as handle:
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
