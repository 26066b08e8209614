"""Received instances written durably to temporary files made ahead of need.

The node answers a C-STORE only once the instance is on disk, so the durable write sits in every
answer. It is one ``write`` into an empty file opened with ``O_DSYNC`` (data and size on disk
when the call returns), and the file already exists: creating one costs 0.2-0.4 ms on ext4 on
the machines this node runs on, so a thread of its own creates the next few while associations
wait for their peers' next instance.

One system call also matters for another reason: the C-STORE handler reads the instance's
attributes on a helper thread while its own thread writes, and a thread that returns from a
system call waits for the interpreter lock; several calls in a row would each wait for the
helper's parsing to end.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dicomnode.fileio import PRIVATE_FILE_MODE

logger = logging.getLogger(__name__)

#: How the files made ahead are named (``.ahead-<pid>-<n>.tmp``): empty until written, and
#: removed with the other temporaries when the node starts.
AHEAD_PREFIX = ".ahead-"


@dataclass
class StagedFile:
    """One instance's bytes in a temporary file, written durably, or why they could not be.

    ``path`` is None once the file has been moved into place or removed."""

    path: Path | None
    size: int
    error: OSError | None = None


class Staging:
    """Durable writes into temporary files that a thread of its own creates ahead of need."""

    def __init__(self, directory: Path, ahead: int = 2) -> None:
        self.directory = directory
        self.ahead = ahead
        self._ready: deque[tuple[Path, int]] = deque()
        self._lock = threading.Lock()
        self._names = itertools.count()
        # Its thread is started on first use (after start-up has removed old temporaries), and
        # ends when the Staging is closed or collected.
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging")

    def write(self, data: bytes | bytearray | memoryview) -> StagedFile:
        """Write ``data`` durably to a temporary file; never raises an OSError (a failure is the
        StagedFile's ``error``, and nothing of it is left on disk)."""
        try:
            path, descriptor = self._take()
        except OSError as error:
            return StagedFile(None, 0, error)
        try:
            with memoryview(data) as view:
                written = 0
                while written < len(view):  # one call for anything under 2 GiB
                    written += os.write(descriptor, view[written:])
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
            leftovers = list(self._ready)
            self._ready.clear()
        for path, descriptor in leftovers:
            os.close(descriptor)
            path.unlink(missing_ok=True)

    def _take(self) -> tuple[Path, int]:
        with self._lock:
            ready = self._ready.popleft() if self._ready else None
        return ready or self._create()

    def _create(self) -> tuple[Path, int]:
        path = self.directory / f"{AHEAD_PREFIX}{os.getpid()}-{next(self._names)}.tmp"
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DSYNC, PRIVATE_FILE_MODE)

    def _make_ahead(self) -> None:
        while True:
            with self._lock:
                if len(self._ready) >= self.ahead:
                    return
            try:
                made = self._create()
            except OSError as error:  # a write makes its own file (and reports the error) meanwhile
                logger.debug("could not make a temporary file ahead: %s", error)
                return
            with self._lock:
                self._ready.append(made)
