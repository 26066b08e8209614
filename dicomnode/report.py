"""What ``dicomnode status`` reports: runs per state, outbox, spool, recent runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicomnode.db import Database
from dicomnode.jobs import JobQueue
from dicomnode.layout import StateLayout


def node_status(state_dir: Path, limit: int = 20) -> dict[str, Any]:
    """Read the state directory of a (running or stopped) node."""
    layout = StateLayout(state_dir)
    if not layout.database.exists():
        raise FileNotFoundError(f"no node state in {state_dir}")
    db = Database(layout.database)
    try:
        queue = JobQueue(db)
        outbox = {row["state"]: row["n"] for row in db.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")}
        return {
            "jobs": queue.counts(),
            "outbox": {state: outbox.get(state, 0) for state in ("pending", "sent", "failed")},
            "instances": db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"],
            "series_waiting": db.query("SELECT COUNT(*) AS n FROM series WHERE pending = 1")[0]["n"],
            "recent": queue.recent(limit),
        }
    finally:
        db.close()
