"""Received instances written durably to temporary files made ahead of need.

The node answers a C-STORE only once the instance is on disk, so the durable write sits in every
answer. It is one ``writev`` into an empty file opened with ``O_DSYNC`` (data and size on disk
when the call returns), and the file already exists: creating one costs 0.2-0.4 ms on ext4 on
the machines this node runs on, so a thread of its own creates the next few while associations
wait for their peers' next instance.

One system call also matters for another reason: the C-STORE handler reads the instance's
attributes on a helper thread while its own thread writes, and a thread that returns from a
system call waits for the interpreter lock; several calls in a row would each wait for the
helper's parsing to end.

A staged file is durable by itself: its name is made durable (the directory fsynced) before
the file is handed out, and the write puts data and size on disk. So the node may answer
success as soon as the write returns, and move the file into the spool afterwards; a file a
stopped node staged and did not move is still there at the next start
(:meth:`Staging.leftovers`).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dicomnode.fileio import PRIVATE_FILE_MODE, fsync_directory

logger = logging.getLogger(__name__)

#: How the files made ahead are named (``.ahead-<pid>-<token>-<n>.tmp``, the token random per
#: process: a restarted node may get the PID of the one that left files behind). Empty until
#: written; at start-up the empty ones are removed and the others filed (:meth:`Staging.leftovers`).
AHEAD_PREFIX = ".ahead-"

#: How many files are kept made ahead.
AHEAD = 2


@dataclass
class StagedFile:
    """One instance's bytes in a temporary file, written durably, or why they could not be.

    ``path`` is None once the file has been moved into place or removed."""

    path: Path | None
    size: int
    error: OSError | None = None


class Staging:
    """Durable writes into temporary files that a thread of its own creates ahead of need."""

    def __init__(self, directory: Path, ahead: int = AHEAD) -> None:
        self.directory = directory
        self.ahead = ahead
        self._ready: deque[tuple[Path, int]] = deque()
        self._lock = threading.Lock()
        self._names = itertools.count()
        self._token = secrets.token_hex(4)
        # Its thread is started on first use (after start-up has removed old temporaries), and
        # ends when the Staging is closed or collected.
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging")

    @property
    def ready(self) -> int:
        """How many files are made ahead, their names durable, waiting for a write."""
        with self._lock:
            return len(self._ready)

    def write(self, parts: Sequence[bytes | memoryview]) -> StagedFile:
        """Write ``parts``, one after the other, durably to a temporary file; never raises an
        OSError (a failure is the StagedFile's ``error``, and nothing of it is left on disk)."""
        try:
            path, descriptor = self._take()
        except OSError as error:
            return StagedFile(None, 0, error)
        try:
            written = write_all(descriptor, parts)
        except OSError as error:
            path.unlink(missing_ok=True)
            return StagedFile(None, 0, error)
        finally:
            os.close(descriptor)
        return StagedFile(path, written)

    def done(self, staged: StagedFile) -> None:
        """The caller is done with ``staged``: remove it if it was not moved into place, and
        have the next file made ahead. Only now: creating a file in the directory a rename
        leaves would make the two wait for each other."""
        if staged.path is not None:
            staged.path.unlink(missing_ok=True)
            staged.path = None
        try:
            self._maker.submit(self._make_ahead)
        except RuntimeError:
            pass  # closed: files are made as they are needed

    def close(self) -> None:
        """Stop making files ahead and remove those not used."""
        self._maker.shutdown(wait=True)
        with self._lock:
            unused = list(self._ready)
            self._ready.clear()
        _discard(unused)

    def leftovers(self) -> list[StagedFile]:
        """Files staged by an earlier process and never moved or removed (those holding data:
        the ones made ahead and never written are not left-overs)."""
        leftovers = []
        for path in sorted(self.directory.glob(f"{AHEAD_PREFIX}*.tmp")):
            size = path.stat().st_size
            if size:
                leftovers.append(StagedFile(path, size))
        return leftovers

    def _take(self) -> tuple[Path, int]:
        with self._lock:
            ready = self._ready.popleft() if self._ready else None
        if ready is not None:
            return ready
        (made,) = self._make(1)  # none ready: made now
        return made

    def _make(self, count: int) -> list[tuple[Path, int]]:
        """``count`` new empty files, open, their names durable (one directory fsync for all);
        raises the OSError of a failure, and leaves none of them behind then."""
        made: list[tuple[Path, int]] = []
        try:
            for _ in range(count):
                path = self.directory / f"{AHEAD_PREFIX}{os.getpid()}-{self._token}-{next(self._names)}.tmp"
                made.append((path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DSYNC, PRIVATE_FILE_MODE)))
            if made:
                fsync_directory(self.directory)
        except OSError:
            _discard(made)
            raise
        return made

    def _make_ahead(self) -> None:
        with self._lock:
            wanted = self.ahead - len(self._ready)
        try:
            made = self._make(wanted)
        except OSError as error:  # a write makes its own file (and reports the error) meanwhile
            logger.debug("could not make a temporary file ahead: %s", error)
            return
        with self._lock:
            self._ready.extend(made)


#: The most buffers one ``writev`` takes (POSIX's IOV_MAX).
_MAX_BUFFERS = os.sysconf("SC_IOV_MAX")


def write_all(descriptor: int, parts: Sequence[bytes | memoryview]) -> int:
    """Write ``parts`` in order with as few system calls as the kernel allows: one ``writev``
    for an instance's prefix and fragments (under 2 GiB and :data:`_MAX_BUFFERS` of them).
    Returns how many bytes were written."""
    pending = [memoryview(part) for part in parts if len(part)]
    total = 0
    while pending:
        count = os.writev(descriptor, pending[:_MAX_BUFFERS])
        total += count
        while pending and count >= len(pending[0]):
            count -= len(pending.pop(0))
        if count:
            pending[0] = pending[0][count:]
    return total


def _discard(made: list[tuple[Path, int]]) -> None:
    """Close and remove files made ahead and not used."""
    for path, descriptor in made:
        os.close(descriptor)
        path.unlink(missing_ok=True)
