"""The spool: received instances as durable files, ``spool/<study>/<series>/<sop>.dcm``."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from dicomnode.fileio import fsync_directory, make_directories, out_of_space, safe_name
from dicomnode.layout import StateLayout
from dicomnode.spool.header import InstanceHeader
from dicomnode.spool.staging import StagedFile, Staging

logger = logging.getLogger(__name__)


class OutOfSpace(OSError):
    """The spool's file system is full or below the configured free-space floor."""


#: Free space no instance may take, above the configured floor: the index rows of instances
#: already acknowledged are written after their answer (:mod:`dicomnode.spool.filing`), and
#: must find room even with a floor of 0 and several associations writing at once.
INDEX_HEADROOM_BYTES = 4 * 2**20


class Spool:
    """Writes instances durably and atomically, and refuses them before the disk is full.

    Writing is two steps, so that the receiver can read an instance's attributes while its
    bytes go to disk, and answer before the file is in its place: :meth:`stage` writes them
    durably to a temporary file whose name is durable too (the instance is safe from then on),
    :meth:`keep` moves that file to the instance's place, and :meth:`done` removes one that was
    not kept. A reader sees a whole file or none; a restarted node finds each staged instance
    in the one place or the other (:meth:`staged_leftovers`).
    """

    def __init__(self, layout: StateLayout, min_free_bytes: int) -> None:
        self.layout = layout
        self.min_free_bytes = min_free_bytes
        self._staging = Staging(layout.temp)

    def relative_path(self, header: InstanceHeader) -> Path:
        """Where an instance lives, from sanitised UIDs (no path traversal through a UID)."""
        return Path(safe_name(header.study_uid), safe_name(header.series_uid), safe_name(header.sop_instance_uid) + ".dcm")

    def absolute(self, relative: Path | str) -> Path:
        return self.layout.spool / relative

    def ensure_room(self, size: int) -> None:
        """Raise :class:`OutOfSpace` if writing ``size`` bytes would cross the free-space floor
        (and :data:`INDEX_HEADROOM_BYTES` above it)."""
        free = shutil.disk_usage(self.layout.spool).free
        if free - size - INDEX_HEADROOM_BYTES < self.min_free_bytes:
            raise OutOfSpace(
                errno.ENOSPC,
                f"{free // 2**20} MiB free, floor is {self.min_free_bytes // 2**20} MiB"
                f" plus {INDEX_HEADROOM_BYTES // 2**20} MiB kept for the index",
            )

    @property
    def made_ahead(self) -> int:
        """How many temporary files are ready for :meth:`stage` (made ahead of need)."""
        return self._staging.ready

    def stage(self, parts: Sequence[bytes | memoryview]) -> StagedFile:
        """Write one encoded DICOM file, given as its parts in order, durably to a temporary
        file (see :meth:`ensure_room`).

        Never raises for a full disk or a failed write: :meth:`staging_failure` says why, so
        that a data set that cannot be understood is refused as such whatever the disk's state."""
        return self._staging.write(parts)

    def staging_failure(self, staged: StagedFile) -> OSError | None:
        """Why ``staged`` could not be written (an :class:`OutOfSpace` for a full disk), or None."""
        error = staged.error
        if error is not None and out_of_space(error) is not None:
            return OutOfSpace(error.errno, str(error))
        return error

    def keep(self, staged: StagedFile, header: InstanceHeader) -> tuple[Path, int]:
        """Move a staged file to the instance's place in the spool; return its relative path
        and size.

        The directory is not fsynced: the staged file is durable under its temporary name, and
        on a journaled file system the rename is atomic on disk too, so after a power cut the
        file is in one place or the other, and a start-up files whatever is still staged (a job
        that had run may run again, as when the last index rows are lost). Without a journal
        (ext4 made so, as on the machines measured in docs/SPEED.md) nothing orders the two
        directories' writes: a power cut may leave the file in neither, for fsck to find; this
        is not handled yet.

        Only for a file that was written (the receiver refuses the others on
        :meth:`staging_failure`); raises the OSError of a failed move (:meth:`done` then removes
        what was staged)."""
        assert staged.error is None and staged.path is not None, "a written staged file is kept once"
        relative = self.relative_path(header)
        target = self.absolute(relative)
        make_directories(target.parent)
        os.replace(staged.path, target)
        staged.path = None
        return relative, staged.size

    def done(self, staged: StagedFile) -> None:
        """Once per staged file, kept or not: removes one that was not kept."""
        self._staging.done(staged)

    def close(self) -> None:
        """Stop making temporary files ahead; remove the unused ones."""
        self._staging.close()

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

    def staged_leftovers(self) -> list[StagedFile]:
        """Instances an earlier process staged and never kept or removed (see :meth:`stage`)."""
        return self._staging.leftovers()

    def clear_temporaries(self) -> int:
        """Remove temporary files a killed process left behind, except the instances it staged
        (:meth:`staged_leftovers`: they may have been acknowledged); return how many held data
        (the empty ones made ahead of need are removed without a word)."""
        leftovers = {staged.path for staged in self.staged_leftovers()}
        written = 0
        for path in self.layout.temp.glob("*.tmp"):
            if path in leftovers:
                continue
            written += path.stat().st_size > 0
            path.unlink(missing_ok=True)
        return written
