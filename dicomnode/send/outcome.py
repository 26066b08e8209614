"""What happened to each file handed to a destination: the one vocabulary of every transport.

The sender does not care whether a file went over DICOM or into a folder; it needs to know,
per file, *delivered* or *refused* (the peer will not take this object: counted, bounded), and
per destination, *unavailable* (nothing was wrong with the files: retried until it is back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomnode.status import STORE_WARNING_STATUSES, Status


@dataclass(frozen=True)
class SendOutcome:
    """The result of handing one file to a destination.

    ``status`` is the DIMSE status the peer answered (``None`` when the file never reached a
    status: no presentation context accepted for it, the file could not be read). ``reason``
    says in words why a file was not delivered (empty when it was).
    """

    path: Path
    status: int | None
    reason: str = ""

    @property
    def delivered(self) -> bool:
        """Success or one of the warning statuses that still mean "stored" (PS3.4 B.2.3)."""
        return self.status is not None and (self.status == Status.SUCCESS or self.status in STORE_WARNING_STATUSES)

    @classmethod
    def from_status(cls, path: Path, status: int) -> SendOutcome:
        """An outcome from the peer's answer; a failure status is kept in hex in the reason."""
        outcome = cls(path, status)
        if outcome.delivered:
            return outcome
        return cls(path, status, f"peer answered status 0x{status:04X}")


#: Called once per file, as soon as its outcome is known, so the caller can record a success
#: before the next file is sent (a crash later in the batch must not send it twice).
OutcomeCallback = Callable[[SendOutcome], None]


class DestinationUnavailable(Exception):
    """The destination cannot take files now (connection refused, association rejected or
    aborted, folder not writable). Nothing is wrong with the files: retry later.

    ``completed`` holds the outcomes of the files finished before the destination went away;
    every other file of the batch is still to be sent.
    """

    def __init__(self, reason: str, completed: Sequence[SendOutcome] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.completed = tuple(completed)
