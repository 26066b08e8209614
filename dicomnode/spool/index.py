"""The index of received instances and of series waiting to be assembled (SQLite)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicomnode.db import Database
from dicomnode.spool.header import HeaderError, InstanceHeader, read_header
from dicomnode.spool.store import Spool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexedInstance:
    """An instance in the spool: its header and where its file is."""

    header: InstanceHeader
    path: Path


@dataclass(frozen=True)
class QuietSeries:
    """A series with new instances and no arrival for the quiet period."""

    series_uid: str
    study_uid: str
    last_received_at: float


class InstanceIndex:
    """Instance rows and per-series arrival times; the assembler's only source."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, header: InstanceHeader, path: Path, size: int, calling_ae: str, now: float) -> bool:
        """Record an instance and mark its series as having news; False if it was already known."""
        with self.db.transaction() as sql:
            inserted = sql.execute(
                "INSERT OR IGNORE INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,"
                " path, size, received_at, calling_ae, header) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    header.sop_instance_uid,
                    header.sop_class_uid,
                    header.study_uid,
                    header.series_uid,
                    str(path),
                    size,
                    now,
                    calling_ae,
                    header.to_json(),
                ),
            ).rowcount
            self._touch_series(sql, header, now)
        return bool(inserted)

    def touch(self, header: InstanceHeader, now: float) -> None:
        """A duplicate arrived: the series has news (a resend asks for a new run)."""
        with self.db.transaction() as sql:
            self._touch_series(sql, header, now)

    @staticmethod
    def _touch_series(sql, header: InstanceHeader, now: float) -> None:  # type: ignore[no-untyped-def]
        sql.execute(
            "INSERT INTO series (series_uid, study_uid, last_received_at, pending) VALUES (?, ?, ?, 1)"
            " ON CONFLICT (series_uid) DO UPDATE SET last_received_at = MAX(last_received_at, excluded.last_received_at),"
            " pending = 1, cleanup_after = NULL",
            (header.series_uid, header.study_uid, now),
        )

    def contains(self, sop_instance_uid: str) -> bool:
        return bool(self.db.query("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)))

    def quiet_series(self, cutoff: float) -> list[QuietSeries]:
        """Series with news whose last instance arrived at or before ``cutoff``."""
        rows = self.db.query(
            "SELECT series_uid, study_uid, last_received_at FROM series"
            " WHERE pending = 1 AND last_received_at <= ? ORDER BY last_received_at",
            (cutoff,),
        )
        return [QuietSeries(row["series_uid"], row["study_uid"], row["last_received_at"]) for row in rows]

    def earliest_pending_arrival(self) -> float | None:
        """When the longest-waiting series with news received its last instance (None: no news)."""
        return self._pending_arrival("MIN")

    def latest_pending_arrival(self) -> float | None:
        """When the last instance of any series with news arrived (None: no news)."""
        return self._pending_arrival("MAX")

    def _pending_arrival(self, aggregate: str) -> float | None:
        rows = self.db.query(f"SELECT {aggregate}(last_received_at) AS arrival FROM series WHERE pending = 1")
        return None if not rows or rows[0]["arrival"] is None else float(rows[0]["arrival"])

    def settled_pending_paths(self, settled_by: float, sop_class_uid: str) -> list[Path]:
        """Spool paths of the ``sop_class_uid`` instances of series with news whose last instance
        arrived at or before ``settled_by`` (the series that stopped arriving first come first)."""
        rows = self.db.query(
            "SELECT instances.path FROM instances JOIN series ON series.series_uid = instances.series_uid"
            " WHERE series.pending = 1 AND series.last_received_at <= ? AND instances.sop_class_uid = ?"
            " ORDER BY series.last_received_at, instances.received_at",
            (settled_by, sop_class_uid),
        )
        return [Path(row["path"]) for row in rows]

    def instances(self, series_uid: str) -> list[IndexedInstance]:
        rows = self.db.query("SELECT header, path FROM instances WHERE series_uid = ?", (series_uid,))
        return [IndexedInstance(InstanceHeader.from_json(row["header"]), Path(row["path"])) for row in rows]

    def instances_by_uid(self, sop_instance_uids: list[str]) -> list[IndexedInstance]:
        """The instances of a job's run that are still indexed (in the given order)."""
        found: dict[str, IndexedInstance] = {}
        for start in range(0, len(sop_instance_uids), 500):
            chunk = sop_instance_uids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.query(
                f"SELECT sop_instance_uid, header, path FROM instances WHERE sop_instance_uid IN ({marks})", chunk
            ):
                found[row["sop_instance_uid"]] = IndexedInstance(InstanceHeader.from_json(row["header"]), Path(row["path"]))
        return [found[uid] for uid in sop_instance_uids if uid in found]

    def expired_series(self, now: float) -> list[str]:
        """Series whose files may be removed: retention over, no news since."""
        rows = self.db.query(
            "SELECT series_uid FROM series WHERE pending = 0 AND cleanup_after IS NOT NULL AND cleanup_after <= ?"
            " AND series_uid NOT IN (SELECT series_uid FROM jobs WHERE state IN ('pending', 'running'))",
            (now,),
        )
        return [row["series_uid"] for row in rows]

    def forget_series(self, spool: Spool, series_uid: str) -> int:
        """Remove a series' files and rows (after its retention period); return the file count."""
        instances = self.instances(series_uid)
        for instance in instances:
            spool.remove(instance.path)
        with self.db.transaction() as sql:
            sql.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
            sql.execute("DELETE FROM series WHERE series_uid = ? AND pending = 0", (series_uid,))
        return len(instances)

    def reindex_orphans(self, spool: Spool, now: float) -> int:
        """Index spool files the index does not know (a crash between write and record, or a
        power loss that cost the last index rows). Unreadable files are logged and left alone."""
        known = {row["path"] for row in self.db.query("SELECT path FROM instances")}
        recovered = 0
        for relative in spool.files():
            if str(relative) in known:
                continue
            path = spool.absolute(relative)
            try:
                header = read_header(pydicom.dcmread(path, stop_before_pixels=True))
            except (InvalidDicomError, HeaderError, OSError, ValueError) as error:
                logger.error("spool file %s is unreadable and was not re-indexed: %s", relative, error)
                continue
            self.record(header, relative, path.stat().st_size, calling_ae="", now=now)
            recovered += 1
        if recovered:
            logger.warning("re-indexed %d spool files the index did not know", recovered)
        return recovered
