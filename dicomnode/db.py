"""The node's SQLite state file: instances, series, jobs and outbox, in one WAL database.

One schema in one place. Each stage owns its tables through its own class (``InstanceIndex``,
``JobQueue``, ``Outbox``); they share a :class:`Database` so that a hand-off between two stages
(a series becoming a job, a job's results entering the outbox) is one transaction.

Durability: WAL with ``synchronous=NORMAL`` survives a killed process (the OS has the data).
After a power loss the index may miss the last rows, but every acknowledged instance is an
fsynced file in the spool, and start-up re-indexes spool files the index does not know.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dicomnode.fileio import PRIVATE_FILE_MODE, make_directories

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid    TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    path             TEXT NOT NULL,      -- relative to the spool directory
    size             INTEGER NOT NULL,
    received_at      REAL NOT NULL,
    calling_ae       TEXT NOT NULL,
    header           TEXT NOT NULL       -- JSON: the attributes the series rules need
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);

CREATE TABLE IF NOT EXISTS series (
    series_uid       TEXT PRIMARY KEY,
    study_uid        TEXT NOT NULL,
    last_received_at REAL NOT NULL,
    pending          INTEGER NOT NULL DEFAULT 1,  -- instances arrived since the last run
    runs             INTEGER NOT NULL DEFAULT 0,
    cleanup_after    REAL                         -- spool files may go after this time
);

CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid  TEXT NOT NULL,
    run         INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('rejected', 'pending', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    reason      TEXT,                -- why it was rejected, or its last error
    instances   TEXT NOT NULL,       -- JSON list of the SOP Instance UIDs of this run
    summary     TEXT                 -- JSON summary of the findings when done
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);

CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER NOT NULL,
    destination      TEXT NOT NULL,       -- the destination's configured name
    path             TEXT NOT NULL,       -- relative to the outbox directory
    sop_instance_uid TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    refusals         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL DEFAULT 0,
    last_error       TEXT,
    sent_at          REAL,
    UNIQUE (job_id, destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox(state, next_attempt_at);
"""


class Database:
    """A thread-safe handle on the state file.

    One connection guarded by a lock: the node's writes are small and few per second, and
    SQLite serialises writers anyway. Other processes (a two-process deployment) share the
    file through WAL and the busy timeout.
    """

    def __init__(self, path: Path) -> None:
        make_directories(path.parent)
        # Created by hand with the node user's mode: SQLite gives its -wal and -shm files the
        # mode of the database file, and would otherwise create it under the umask.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))
        self.path = path
        self._lock = threading.RLock()
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run statements atomically (``BEGIN IMMEDIATE`` takes the write lock up front)."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
                self._connection.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a full disk) may leave the transaction open, or SQLite may
                # have rolled it back itself already; either way the next one starts clean.
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                raise

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Read rows (a consistent snapshot of one statement)."""
        with self._lock:
            return self._connection.execute(sql, parameters).fetchall()

    def close(self) -> None:
        with self._lock:
            self._connection.close()
