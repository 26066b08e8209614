"""The durable job queue: one row per run of a series (SQLite table ``jobs``).

States: ``rejected`` (a rule failed; never runs), ``pending`` -> ``running`` -> ``done`` or,
after a bounded number of attempts, ``failed``. A job found ``running`` at start-up was
interrupted by a crash and goes back to ``pending``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from dicomnode.db import Database
from dicomnode.spool import QuietSeries

logger = logging.getLogger(__name__)

STATES = ("rejected", "pending", "running", "done", "failed")


@dataclass(frozen=True)
class Job:
    """A run of a series: the instances it covers and where it stands."""

    id: int
    series_uid: str
    run: int
    state: str
    attempts: int
    instances: tuple[str, ...]
    reason: str | None


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        series_uid=row["series_uid"],
        run=row["run"],
        state=row["state"],
        attempts=row["attempts"],
        instances=tuple(json.loads(row["instances"])),
        reason=row["reason"],
    )


class JobQueue:
    """Submitting, claiming and finishing jobs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def submit(
        self, series: QuietSeries, instance_uids: list[str], rejection: str | None, now: float, retention_seconds: float
    ) -> int | None:
        """Turn a quiet series into a job (or a rejected run) atomically.

        Returns None, and changes nothing, when an instance arrived since the series was read:
        the assembler will see the series again after the next quiet period.
        """
        with self.db.transaction() as sql:
            claimed = sql.execute(
                "UPDATE series SET pending = 0, runs = runs + 1, cleanup_after = ?"
                " WHERE series_uid = ? AND pending = 1 AND last_received_at = ?",
                (now + retention_seconds if rejection else None, series.series_uid, series.last_received_at),
            ).rowcount
            if not claimed:
                return None
            run = sql.execute("SELECT runs FROM series WHERE series_uid = ?", (series.series_uid,)).fetchone()["runs"]
            return sql.execute(
                "INSERT INTO jobs (series_uid, run, state, created_at, updated_at, reason, instances)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    series.series_uid,
                    run,
                    "rejected" if rejection else "pending",
                    now,
                    now,
                    rejection,
                    json.dumps(sorted(instance_uids)),
                ),
            ).lastrowid

    def claim(self, now: float) -> Job | None:
        """Take the oldest runnable job, mark it running and count the attempt."""
        with self.db.transaction() as sql:
            row = sql.execute(
                "SELECT * FROM jobs WHERE state = 'pending' AND not_before <= ? ORDER BY id LIMIT 1", (now,)
            ).fetchone()
            if row is None:
                return None
            sql.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (now, row["id"]),
            )
            return _job(sql.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    @staticmethod
    def mark_done(sql: sqlite3.Connection, job: Job, summary: dict[str, Any], now: float, retention_seconds: float) -> None:
        """Finish a job inside the caller's transaction (the same one that fills the outbox)."""
        sql.execute(
            "UPDATE jobs SET state = 'done', updated_at = ?, reason = NULL, summary = ? WHERE id = ?",
            (now, json.dumps(summary), job.id),
        )
        sql.execute(
            "UPDATE series SET cleanup_after = ? WHERE series_uid = ? AND pending = 0",
            (now + retention_seconds, job.series_uid),
        )

    def mark_failed(
        self, job: Job, error: str, now: float, *, retry: bool, max_attempts: int, retry_delay: float, retention_seconds: float
    ) -> str:
        """Record a failed attempt: back to pending for a later retry, or failed for good.

        Returns the new state.
        """
        final = not retry or job.attempts >= max_attempts
        state = "failed" if final else "pending"
        with self.db.transaction() as sql:
            sql.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, reason = ?, not_before = ? WHERE id = ?",
                (state, now, error, now + retry_delay, job.id),
            )
            if final:
                sql.execute(
                    "UPDATE series SET cleanup_after = ? WHERE series_uid = ? AND pending = 0",
                    (now + retention_seconds, job.series_uid),
                )
        return state

    def postpone(self, job: Job, reason: str, not_before: float) -> None:
        """Put a running job back to pending until ``not_before``; the attempt does not count."""
        with self.db.transaction() as sql:
            sql.execute(
                "UPDATE jobs SET state = 'pending', attempts = attempts - 1, reason = ?, not_before = ?, updated_at = ?"
                " WHERE id = ? AND state = 'running'",
                (reason, not_before, not_before, job.id),
            )

    def resume_interrupted(self) -> int:
        """At start-up: jobs left running by a killed process become pending again."""
        with self.db.transaction() as sql:
            count = sql.execute("UPDATE jobs SET state = 'pending', not_before = 0 WHERE state = 'running'").rowcount
        if count:
            logger.warning("resumed %d job(s) interrupted by a restart", count)
        return count

    def counts(self) -> dict[str, int]:
        """Number of series runs per state."""
        counts = dict.fromkeys(STATES, 0)
        for row in self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first, for the status command."""
        rows = self.db.query(
            "SELECT id, series_uid, run, state, attempts, updated_at, reason, summary,"
            " json_array_length(instances) AS instances FROM jobs ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            {key: (json.loads(row[key]) if key == "summary" and row[key] else row[key]) for key in row.keys()}
            for row in rows
        ]
