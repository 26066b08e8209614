"""Logging for the entry point only: stderr, journald-friendly.

Under systemd (``JOURNAL_STREAM`` is set) each line starts with a ``<N>`` syslog priority that
journald turns into the entry's priority, and carries no timestamp (journald adds one).
Elsewhere lines carry an ISO timestamp. Library modules only call ``logging.getLogger``.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def configure_logging(level: str) -> None:
    """Send every log line to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO and every failed connection at ERROR, so a destination
    # that is down would flood the log on each retry; the node logs each outcome itself, with
    # its reason and the next retry time (DEBUG shows pynetdicom in full, for troubleshooting).
    # highdicom logs each attribute it copies at INFO.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLevelName(level)))
