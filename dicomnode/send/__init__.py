"""The sending stage: a durable outbox, delivered by C-STORE or into folders, with retries.

The worker calls :meth:`Outbox.store` then :meth:`Outbox.enqueue` (inside the transaction
that marks its job done); :class:`Sender` delivers; :func:`echo` backs ``dicomnode echo``.
"""

from dicomnode.send.folder import copy_files
from dicomnode.send.outbox import Outbox, OutboxFile, OutboxItem, backoff_seconds
from dicomnode.send.outcome import DestinationUnavailable, SendOutcome
from dicomnode.send.scu import echo, send_files
from dicomnode.send.sender import Sender

__all__ = [
    "DestinationUnavailable",
    "Outbox",
    "OutboxFile",
    "OutboxItem",
    "SendOutcome",
    "Sender",
    "backoff_seconds",
    "copy_files",
    "echo",
    "send_files",
]
