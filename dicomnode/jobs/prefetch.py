"""Reading a series ahead, during its quiet period, so that its job starts from decoded slices.

Why: decoding the slices is the first seconds of every job (RICORD, 255 JPEG-lossless slices:
about 2 s on 2 cores), while the worker sits idle for the whole quiet period that tells the
node a series is complete. The worker calls :meth:`Prefetcher.step` whenever it has no job: it
reads (:func:`dicomnode.volume.read_slice`) the CT files of series that have received nothing
for :data:`SETTLE_SECONDS`, a batch at a time, and the job takes them with :meth:`take`.

- Only while nothing arrives at all: decoding while instances stream in, of this series or of
  any other (a study's next series, another scanner), would take the CPU and the GIL from
  receiving. Three 300-slice series sent one after the other (0.1 s apart) came in at 418-421,
  174-175 and 82-96 instances/s while the earlier ones were read ahead; 400-437, 333-435 and
  315-469/s without.
- A slice is used only if its file is unchanged since it was read (inode, size, modification
  time); anything else, and every file that could not be read, is read again by the job,
  which then reports what is wrong exactly as without read-ahead.
- Memory is bounded (:data:`BUDGET_BYTES`); planes are 16-bit HU, as in the volume they
  become. Slices of series that no job took are dropped after :data:`FORGET_SECONDS`.

Everything runs in the worker's thread: no locks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from dicomnode.settings import CT_IMAGE_STORAGE
from dicomnode.spool import InstanceIndex, Spool
from dicomnode.volume import DECODE_THREADS, DecodedSlice, VolumeError, read_slice

logger = logging.getLogger(__name__)

#: Series are read ahead once the node has received nothing for this long.
SETTLE_SECONDS = 0.5
#: Files read per step: a step is short, so a job that becomes due waits little.
BATCH = 4 * DECODE_THREADS
#: Most bytes of planes held (about 1000 slices of 512x512).
BUDGET_BYTES = 512 * 2**20
#: Slices of series no longer waiting (taken by no job: refused, forgotten) are dropped after this.
FORGET_SECONDS = 60.0

_Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class _Entry:
    stamp: _Stamp  # the file's (inode, size, mtime_ns) before it was read
    decoded: DecodedSlice | None  # None: the file could not be read ahead
    wanted_at: float  # when its series was last seen waiting


class Prefetcher:
    """Slices read ahead for the worker, by absolute spool path."""

    def __init__(self, index: InstanceIndex, spool: Spool, budget_bytes: int = BUDGET_BYTES) -> None:
        self.index = index
        self.spool = spool
        self.budget_bytes = budget_bytes
        self._entries: dict[Path, _Entry] = {}
        self._bytes = 0

    def step(self, now: float) -> float:
        """Read up to :data:`BATCH` more files of waiting series, once nothing has arrived for
        :data:`SETTLE_SECONDS`. Returns when to call again, in seconds: 0 after reading, else when
        the node may have settled (inf: no series waits, or all are read)."""
        settled_by = now - SETTLE_SECONDS
        latest = self.index.latest_pending_arrival()
        if latest is not None and latest > settled_by:
            return latest - settled_by  # still receiving
        wanted = [self.spool.absolute(path) for path in self.index.settled_pending_paths(settled_by, CT_IMAGE_STORAGE)]
        for path in wanted:
            if path in self._entries:
                self._entries[path] = replace(self._entries[path], wanted_at=now)
        self._forget_unwanted(now)
        todo = [path for path in wanted if path not in self._entries][:BATCH]
        if todo and self._bytes < self.budget_bytes:
            with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="read-ahead") as pool:
                entries = list(pool.map(lambda path: _read(path, now), todo))
            for path, entry in zip(todo, entries):
                self._entries[path] = entry
                self._bytes += _size(entry)
            return 0.0
        return float("inf")

    def take(self, paths: Sequence[Path]) -> dict[Path, DecodedSlice]:
        """The slices of ``paths`` read ahead from files unchanged since; they leave the cache."""
        taken = {}
        for path in paths:
            entry = self._entries.pop(path, None)
            if entry is None:
                continue
            self._bytes -= _size(entry)
            if entry.decoded is not None and entry.stamp == _stamp(path):
                taken[path] = entry.decoded
        if taken:
            logger.info("%d of %d slices were read ahead", len(taken), len(paths))
        return taken

    def _forget_unwanted(self, now: float) -> None:
        for path in [p for p, e in self._entries.items() if now - e.wanted_at > FORGET_SECONDS]:
            self._bytes -= _size(self._entries.pop(path))


def _read(path: Path, now: float) -> _Entry:
    """Read one file ahead; a file that cannot be read is remembered as such (the job says why)."""
    stamp = _stamp(path)
    try:
        decoded = read_slice(path)
    except (VolumeError, OSError, MemoryError) as error:
        logger.debug("%s not read ahead: %s", path, error)
        return _Entry(stamp, None, now)
    return _Entry(stamp, decoded, now)


def _stamp(path: Path) -> _Stamp:
    try:
        info = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _size(entry: _Entry) -> int:
    return 0 if entry.decoded is None else entry.decoded.hu.nbytes

