"""The spool: received instances as durable files, ``spool/<study>/<series>/<sop>.dcm``."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

from dicomnode.fileio import fsync_directory, out_of_space, safe_name, write_atomically
from dicomnode.layout import StateLayout
from dicomnode.spool.header import InstanceHeader

logger = logging.getLogger(__name__)


class OutOfSpace(OSError):
    """The spool's file system is full or below the configured free-space floor."""


class Spool:
    """Writes instances atomically and refuses them before the disk is full."""

    def __init__(self, layout: StateLayout, min_free_bytes: int) -> None:
        self.layout = layout
        self.min_free_bytes = min_free_bytes

    def relative_path(self, header: InstanceHeader) -> Path:
        """Where an instance lives, from sanitised UIDs (no path traversal through a UID)."""
        return Path(safe_name(header.study_uid), safe_name(header.series_uid), safe_name(header.sop_instance_uid) + ".dcm")

    def absolute(self, relative: Path | str) -> Path:
        return self.layout.spool / relative

    def write(self, header: InstanceHeader, encoded: bytes) -> tuple[Path, int]:
        """Write one encoded DICOM file durably; return its relative path and size.

        Raises :class:`OutOfSpace` when the write would cross the free-space floor or the
        disk fills during it; nothing half-written is left in either case.
        """
        free = shutil.disk_usage(self.layout.spool).free
        if free - len(encoded) < self.min_free_bytes:
            raise OutOfSpace(errno.ENOSPC, f"{free // 2**20} MiB free, floor is {self.min_free_bytes // 2**20} MiB")
        relative = self.relative_path(header)
        try:
            size = write_atomically(self.absolute(relative), lambda handle: handle.write(encoded), self.layout.temp)
        except OSError as error:
            if out_of_space(error) is not None:
                raise OutOfSpace(error.errno, str(error)) from error
            raise
        return relative, size

    def remove(self, relative: Path | str) -> None:
        """Delete one spool file and the directories it leaves empty."""
        path = self.absolute(relative)
        path.unlink(missing_ok=True)
        for directory in (path.parent, path.parent.parent):
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (or already gone): stop climbing
        fsync_directory(self.layout.spool)

    def files(self) -> list[Path]:
        """Every spool file, relative to the spool directory."""
        return [path.relative_to(self.layout.spool) for path in self.layout.spool.glob("*/*/*.dcm")]

    def clear_temporaries(self) -> int:
        """Remove temporary files a killed process left behind; return how many."""
        leftovers = list(self.layout.temp.glob("*.tmp"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)
