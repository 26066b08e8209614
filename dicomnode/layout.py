"""Where the node keeps its state inside the state directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicomnode.fileio import PRIVATE_DIRECTORY_MODE, make_directories


@dataclass(frozen=True)
class StateLayout:
    """The spool, the outbox and the SQLite file: the node's whole state, all on disk."""

    root: Path

    @property
    def spool(self) -> Path:
        """Received instances: ``spool/<study>/<series>/<sop>.dcm``."""
        return self.root / "spool"

    @property
    def outbox(self) -> Path:
        """Results waiting to be sent: ``outbox/<job id>/<sop>.dcm``."""
        return self.root / "outbox"

    @property
    def temp(self) -> Path:
        """Temporary files, on the same file system as spool and outbox so renames are atomic."""
        return self.root / "tmp"

    @property
    def database(self) -> Path:
        return self.root / "state.sqlite3"

    def create(self) -> None:
        """Create the directories, and make them the node user's alone (also when they existed:
        a state directory made by hand or by an older version keeps no wider mode)."""
        for directory in (self.root, self.spool, self.outbox, self.temp):
            make_directories(directory)
            directory.chmod(PRIVATE_DIRECTORY_MODE)
