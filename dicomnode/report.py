"""What ``dicomnode status`` reports: runs per state, outbox, spool, recent runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicomnode.db import Database
from dicomnode.jobs import JobQueue
from dicomnode.layout import StateLayout
from dicomnode.send import Outbox
from dicomnode.settings import Settings


def node_status(state_dir: Path, settings: Settings, limit: int = 20) -> dict[str, Any]:
    """Read the state directory of a (running or stopped) node."""
    layout = StateLayout(state_dir)
    if not layout.database.exists():
        raise FileNotFoundError(f"no node state in {state_dir}")
    db = Database(layout.database)
    try:
        queue = JobQueue(db)
        return {
            "jobs": queue.counts(),
            "outbox": Outbox(db, layout, settings).counts(),
            "instances": db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"],
            "series_waiting": db.query("SELECT COUNT(*) AS n FROM series WHERE pending = 1")[0]["n"],
            "recent": queue.recent(limit),
        }
    finally:
        db.close()
