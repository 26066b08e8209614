"""The outbox: results stored durably, and one delivery row per file per destination.

The worker writes a job's results here (:meth:`Outbox.store`) and enqueues them
(:meth:`Outbox.enqueue`) in the same transaction that marks the job done, so a crash leaves
either a done job with all its deliveries queued, or a job that runs again and overwrites the
same files. The sender then works through the rows: a success is committed at once (nothing
is sent twice after a success), a destination that is down is retried with exponential backoff
for as long as it takes, and an object a peer refuses is retried a bounded number of times.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from dicomnode.db import Database
from dicomnode.fileio import fsync_directory, make_directories, safe_name, write_atomically
from dicomnode.layout import StateLayout
from dicomnode.results import ResultObject
from dicomnode.settings import SenderSettings, Settings

logger = logging.getLogger(__name__)

STATES = ("pending", "sent", "failed")


@dataclass(frozen=True)
class OutboxFile:
    """One stored result: its path relative to the outbox directory, its SOP Instance UID, and
    what it is (which destinations want it: :meth:`dicomnode.settings.Delivery.wants`)."""

    path: str
    sop_instance_uid: str
    kind: str
    seg_type: str | None


@dataclass(frozen=True)
class OutboxItem:
    """One pending delivery of one file to one destination (a row of the ``outbox`` table)."""

    id: int
    job_id: int
    destination: str
    path: Path
    sop_instance_uid: str
    attempts: int
    refusals: int


def backoff_seconds(policy: SenderSettings, failures: int) -> float:
    """Delay before the next try after ``failures`` failed tries: doubling, capped."""
    exponent = min(max(failures, 1) - 1, 64)  # 2**64 * any delay is far past any cap
    return min(policy.retry_initial_seconds * 2.0**exponent, policy.retry_max_seconds)


def _write_dataset(dataset: Dataset, handle: BinaryIO) -> None:
    dcmwrite(handle, dataset, enforce_file_format=True)


class Outbox:
    """Durable results and their delivery state, over the ``outbox`` table and directory."""

    def __init__(self, database: Database, layout: StateLayout, settings: Settings) -> None:
        self.database = database
        self.layout = layout
        self.directory = layout.outbox
        self.policy = settings.sender
        self.destinations = settings.destinations
        self.destination_names = tuple(destination.name for destination in settings.destinations)
        self._warned_unknown: set[str] = set()

    # --- the worker's side ---------------------------------------------------------------

    def store(self, job_id: int, results: Sequence[ResultObject]) -> list[OutboxFile]:
        """Write the ``results`` durably as ``outbox/<job_id>/<sop>.dcm`` (DICOM files with meta).

        Call before :meth:`enqueue`, outside the transaction: files first, rows second, so a
        committed row always has its file. Storing a job again replaces its files.
        """
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
            raise ValueError(f"job_id must be a non-negative integer, got {job_id!r}")
        prepared: list[tuple[Dataset, OutboxFile]] = []
        for result in results:
            dataset = result.dataset
            uid = str(dataset.get("SOPInstanceUID", "") or "")
            if not uid:
                raise ValueError(f"job {job_id}: a dataset to send has no SOP Instance UID")
            meta = getattr(dataset, "file_meta", None)
            if meta is None or "TransferSyntaxUID" not in meta:
                raise ValueError(f"job {job_id}: dataset {uid} has no file meta Transfer Syntax UID")
            if any(file.sop_instance_uid == uid for _, file in prepared):
                raise ValueError(f"job {job_id}: SOP Instance UID {uid} appears twice")
            prepared.append((dataset, OutboxFile(f"{job_id}/{safe_name(uid)}.dcm", uid, result.kind, result.seg_type)))
        make_directories(self.directory)
        job_directory_existed = (self.directory / str(job_id)).exists()
        for dataset, file in prepared:
            write_atomically(self.directory / file.path, partial(_write_dataset, dataset), temp_dir=self.layout.temp)
        if prepared and not job_directory_existed:
            fsync_directory(self.directory)  # the new job directory's entry must survive too
        return [file for _, file in prepared]

    def enqueue(
        self, connection: sqlite3.Connection, job_id: int, files: Sequence[OutboxFile], now: float | None = None
    ) -> int:
        """Queue each file for every configured destination that wants it, inside the caller's transaction.

        ``connection`` is the one :meth:`Database.transaction` yielded. A row that already
        exists (the job ran again after a crash) is left as it is. Returns the rows added.
        """
        if not connection.in_transaction:
            raise ValueError("enqueue must run inside Database.transaction() (no transaction is open)")
        if files and not self.destination_names:
            logger.warning("job %d: no destination is configured; its results stay in %s", job_id, self.directory)
        now = time.time() if now is None else now
        rows = [
            (job_id, destination.name, file.path, file.sop_instance_uid, now)
            for destination in self.destinations
            for file in files
            if destination.delivery.wants(file.kind, file.seg_type)
        ]
        before = connection.total_changes
        connection.executemany(
            "INSERT OR IGNORE INTO outbox (job_id, destination, path, sop_instance_uid, state, next_attempt_at)"
            " VALUES (?, ?, ?, ?, 'pending', ?)",
            rows,
        )
        return connection.total_changes - before

    # --- the sender's side ---------------------------------------------------------------

    def due(self, now: float | None = None) -> dict[str, list[OutboxItem]]:
        """Pending deliveries whose time has come, per configured destination (in config order).

        Rows for a destination no longer configured stay pending (it may come back with the
        next configuration); they are reported once per destination with a warning.
        """
        now = time.time() if now is None else now
        self._warn_unknown_destinations()
        if not self.destination_names:
            return {}
        marks = ", ".join("?" * len(self.destination_names))
        rows = self.database.query(
            "SELECT id, job_id, destination, path, sop_instance_uid, attempts, refusals FROM outbox"
            f" WHERE state = 'pending' AND next_attempt_at <= ? AND destination IN ({marks}) ORDER BY id",
            (now, *self.destination_names),
        )
        grouped: dict[str, list[OutboxItem]] = {}
        for row in rows:
            item = OutboxItem(
                id=row["id"],
                job_id=row["job_id"],
                destination=row["destination"],
                path=self.directory / row["path"],
                sop_instance_uid=row["sop_instance_uid"],
                attempts=row["attempts"],
                refusals=row["refusals"],
            )
            grouped.setdefault(item.destination, []).append(item)
        return {name: grouped[name] for name in self.destination_names if name in grouped}

    def _warn_unknown_destinations(self) -> None:
        rows = self.database.query("SELECT DISTINCT destination FROM outbox WHERE state = 'pending'")
        for row in rows:
            name = row["destination"]
            if name not in self.destination_names and name not in self._warned_unknown:
                self._warned_unknown.add(name)
                logger.warning(
                    "the outbox holds pending objects for destination %r, which is no longer configured;"
                    " they stay pending until it is configured again",
                    name,
                )

    def mark_sent(self, item: OutboxItem, now: float | None = None) -> None:
        """Record a delivery; committed at once, before the next file is sent."""
        now = time.time() if now is None else now
        with self.database.transaction() as connection:
            connection.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, last_error = NULL WHERE id = ? AND state = 'pending'",
                (now, item.id),
            )

    def record_unavailable(
        self, items: Iterable[OutboxItem], reason: str, now: float | None = None
    ) -> float | None:
        """The destination could not be reached: retry later, without limit.

        Returns the earliest next attempt time among ``items`` (for the caller's warning), or
        ``None`` when none of them was still pending.
        """
        now = time.time() if now is None else now
        earliest: float | None = None
        with self.database.transaction() as connection:
            for item in items:
                row = connection.execute(
                    "SELECT attempts, refusals FROM outbox WHERE id = ? AND state = 'pending'", (item.id,)
                ).fetchone()
                if row is None:
                    continue
                attempts = row["attempts"] + 1
                next_attempt_at = now + backoff_seconds(self.policy, attempts + row["refusals"])
                earliest = next_attempt_at if earliest is None else min(earliest, next_attempt_at)
                connection.execute(
                    "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                    (attempts, next_attempt_at, reason, item.id),
                )
        return earliest

    def record_refusal(self, item: OutboxItem, reason: str, now: float | None = None) -> float | None:
        """The destination would not take this object: retry a bounded number of times.

        Returns the next attempt time, or ``None`` when the row has now failed for good.
        """
        now = time.time() if now is None else now
        with self.database.transaction() as connection:
            row = connection.execute(
                "SELECT attempts, refusals FROM outbox WHERE id = ? AND state = 'pending'", (item.id,)
            ).fetchone()
            if row is None:
                return None
            refusals = row["refusals"] + 1
            if refusals >= self.policy.max_refusals:
                connection.execute(
                    "UPDATE outbox SET refusals = ?, state = 'failed', last_error = ? WHERE id = ?",
                    (refusals, reason, item.id),
                )
                next_attempt_at = None
            else:
                next_attempt_at = now + backoff_seconds(self.policy, refusals + row["attempts"])
                connection.execute(
                    "UPDATE outbox SET refusals = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                    (refusals, next_attempt_at, reason, item.id),
                )
        if next_attempt_at is None:
            logger.error(
                "giving up on %s (job %d) for destination %s after %d refusals: %s",
                item.sop_instance_uid,
                item.job_id,
                item.destination,
                refusals,
                reason,
            )
        return next_attempt_at

    # --- status and housekeeping ---------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of rows per state (every state present, zero when none)."""
        counts = dict.fromkeys(STATES, 0)
        for row in self.database.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    def finished(self, job_id: int) -> bool:
        """True when the job has delivery rows and none of them is pending any more."""
        row = self.database.query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(state = 'pending'), 0) AS pending FROM outbox WHERE job_id = ?",
            (job_id,),
        )[0]
        return row["n"] > 0 and row["pending"] == 0

    def cleanup(self, job_ids: Iterable[int] | None = None) -> list[int]:
        """Remove the files of finished jobs (rows are kept as history); return those jobs.

        ``job_ids`` None means every job directory in the outbox (at start-up). A directory
        without rows is left alone: its job may be between :meth:`store` and the commit.
        """
        if job_ids is None:
            job_ids = sorted(int(p.name) for p in self._job_directories())
        removed = []
        for job_id in job_ids:
            directory = self.directory / str(job_id)
            if directory.is_dir() and self.finished(job_id):
                shutil.rmtree(directory)
                removed.append(job_id)
                logger.info("removed the outbox files of job %d (every delivery sent or failed)", job_id)
        if removed:
            fsync_directory(self.directory)
        return removed

    def _job_directories(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit()]
