"""Folder destination: results written as ``<folder>/<study>/<series>/<sop>.dcm``.

For a viewer or a script that watches a directory. Each file appears atomically (a temporary
file in the same folder, fsynced, then renamed), so a watcher never reads half a file; writing
the same object again replaces it, so a retry after a crash is harmless.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicomnode.fileio import safe_name, write_atomically
from dicomnode.send.outcome import DestinationUnavailable, OutcomeCallback, SendOutcome
from dicomnode.settings import FolderDestination
from dicomnode.status import Status

_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def target_path(folder: Path, source: Path) -> Path:
    """Where ``source`` goes inside ``folder``; raises ``ValueError`` when it lacks a UID."""
    header = dcmread(source, stop_before_pixels=True, specific_tags=list(_UID_KEYWORDS))
    uids = [str(header.get(keyword, "") or "") for keyword in _UID_KEYWORDS]
    missing = [keyword for keyword, uid in zip(_UID_KEYWORDS, uids) if not uid]
    if missing:
        raise ValueError(f"{source.name} lacks {', '.join(missing)}")
    study, series, sop = (safe_name(uid) for uid in uids)
    return folder / study / series / f"{sop}.dcm"


def _copy_from(source: Path) -> Callable[[BinaryIO], None]:
    """A writer for :func:`write_atomically` that copies the bytes of ``source`` unchanged."""

    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as data:
            shutil.copyfileobj(data, handle, length=1 << 20)

    return copy


def copy_files(
    destination: FolderDestination, paths: Sequence[Path], on_outcome: OutcomeCallback | None = None
) -> list[SendOutcome]:
    """Copy ``paths`` (the outbox files, bytes unchanged) into the destination folder.

    A file that cannot be read or lacks its UIDs is refused (it will never work). A failure to
    write (permission, disk full, folder unmounted) raises :class:`DestinationUnavailable`: the
    folder may come back, so it is retried like a peer that is down.
    """
    outcomes: list[SendOutcome] = []
    for path in paths:
        try:
            target = target_path(destination.path, path)
        except (OSError, InvalidDicomError, ValueError) as error:
            outcome = SendOutcome(path, None, f"cannot read {path.name}: {error}")
        else:
            try:
                write_atomically(target, _copy_from(path), private=False)
            except OSError as error:
                reason = f"cannot write to folder {destination.path}: {error}"
                raise DestinationUnavailable(reason, outcomes) from error
            outcome = SendOutcome(path, Status.SUCCESS)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes
