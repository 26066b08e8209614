"""Quiet-timer completion, eligibility, runs and retention, on a real spool and index."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import pytest

from dicomnode.assembly import Assembler
from dicomnode.db import Database
from dicomnode.doorbell import Doorbell
from dicomnode.jobs import JobQueue
from dicomnode.layout import StateLayout
from dicomnode.net.receiver import StoreReceiver
from dicomnode.settings import Settings
from dicomnode.spool import InstanceIndex, Spool
from dicomnode.status import Status
from factories import PhantomSeries
from receivers import as_received

QUIET = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Pipeline:
    clock: Clock
    receiver: StoreReceiver
    assembler: Assembler
    queue: JobQueue
    db: Database
    spool: Spool

    def receive(self, series: PhantomSeries, only: slice = slice(None)) -> None:
        for ds in series.datasets()[only]:
            assert self.receiver.receive(as_received(ds), "TEST") == Status.SUCCESS
            self.clock.now += 0.01
        self.receiver.settle()

    def jobs(self) -> list[dict]:
        return [dict(row) for row in self.db.query("SELECT * FROM jobs ORDER BY id")]


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    settings = Settings()
    settings = dataclasses.replace(
        settings,
        assembly=dataclasses.replace(settings.assembly, quiet_seconds=QUIET),
        storage=dataclasses.replace(settings.storage, retention_hours=1.0, state_dir=tmp_path),
    )
    layout = StateLayout(tmp_path)
    layout.create()
    db = Database(layout.database)
    spool = Spool(layout, 0)
    index = InstanceIndex(db)
    clock = Clock()
    queue = JobQueue(db)
    return Pipeline(
        clock,
        StoreReceiver(spool, index, settings.storage.keep_sop_classes, clock),
        Assembler(index, spool, queue, settings),
        queue,
        db,
        spool,
    )


def test_a_series_becomes_a_job_only_after_the_quiet_period(pipeline: Pipeline) -> None:
    series = PhantomSeries()
    pipeline.receive(series, slice(0, 20))
    assert pipeline.assembler.run_once(pipeline.clock.now + QUIET - 1) == 0
    pipeline.clock.now += QUIET - 1  # the rest arrives on another association, just in time
    pipeline.receive(series, slice(20, None))
    assert pipeline.assembler.run_once(pipeline.clock.now + QUIET - 1) == 0
    assert pipeline.assembler.run_once(pipeline.clock.now + QUIET) == 1
    (job,) = pipeline.jobs()
    assert job["state"] == "pending" and job["run"] == 1 and job["instances"].count(".") > 40


def test_interleaved_series_become_two_jobs(pipeline: Pipeline) -> None:
    first, second = PhantomSeries(seed=1), PhantomSeries(seed=2)
    for start in range(0, 40, 5):
        pipeline.receive(first, slice(start, start + 5))
        pipeline.receive(second, slice(start, start + 5))
    assert pipeline.assembler.run_once(pipeline.clock.now + QUIET) == 2
    assert sorted(j["series_uid"] for j in pipeline.jobs()) == sorted([first.series_uid, second.series_uid])
    assert all(j["state"] == "pending" for j in pipeline.jobs())


def test_a_rejected_series_is_logged_and_cleaned_up_after_retention(pipeline: Pipeline, caplog) -> None:  # type: ignore[no-untyped-def]
    small = PhantomSeries(slices=3)
    pipeline.receive(small)
    with caplog.at_level(logging.WARNING):
        pipeline.assembler.run_once(pipeline.clock.now + QUIET)
    (job,) = pipeline.jobs()
    assert job["state"] == "rejected" and job["reason"] == "minimum slices: 3 slices, at least 20 needed"
    assert f"series {small.series_uid} (3 instances) not analysed: minimum slices" in caplog.text
    assert len(pipeline.spool.files()) == 3
    pipeline.assembler.run_once(pipeline.clock.now + QUIET + 3599)
    assert len(pipeline.spool.files()) == 3
    pipeline.assembler.run_once(pipeline.clock.now + QUIET + 3601)
    assert pipeline.spool.files() == []


def test_a_missing_slice_is_rejected_with_its_position(pipeline: Pipeline) -> None:
    pipeline.receive(PhantomSeries(missing=(17,)))
    pipeline.assembler.run_once(pipeline.clock.now + QUIET)
    (job,) = pipeline.jobs()
    assert job["state"] == "rejected" and "between -90.00 and -80.00" in job["reason"]


def test_instances_after_a_run_start_a_new_run_of_the_whole_series(pipeline: Pipeline) -> None:
    series = PhantomSeries()
    pipeline.receive(series, slice(0, 30))
    pipeline.assembler.run_once(pipeline.clock.now + QUIET)
    pipeline.clock.now += 60
    pipeline.receive(series, slice(30, None))
    pipeline.assembler.run_once(pipeline.clock.now + QUIET)
    first, second = pipeline.jobs()
    assert (first["run"], second["run"]) == (1, 2)
    assert first["state"] == "pending" and second["state"] == "pending"
    assert len(second["instances"].split(",")) == 40


def test_news_between_reading_and_submitting_defers_the_series(pipeline: Pipeline) -> None:
    series = PhantomSeries()
    pipeline.receive(series, slice(0, 39))
    quiet = pipeline.assembler.index.quiet_series(pipeline.clock.now + QUIET)
    pipeline.receive(series, slice(39, None))  # arrives while the assembler is deciding
    assert pipeline.queue.submit(quiet[0], [], None, pipeline.clock.now, 0) is None
    assert pipeline.jobs() == []


def test_interrupted_jobs_resume_after_a_restart(pipeline: Pipeline) -> None:
    pipeline.receive(PhantomSeries())
    pipeline.assembler.run_once(pipeline.clock.now + QUIET)
    claimed = pipeline.queue.claim(pipeline.clock.now + QUIET)
    assert claimed is not None and claimed.attempts == 1
    restarted = JobQueue(Database(pipeline.db.path))  # as a new process would
    assert restarted.resume_interrupted() == 1
    again = restarted.claim(pipeline.clock.now + QUIET)
    assert again is not None and again.id == claimed.id and again.attempts == 2


def test_orphan_spool_files_are_reindexed(pipeline: Pipeline) -> None:
    """A file written but never indexed (killed in between) is found again at start-up."""
    pipeline.receive(PhantomSeries())
    with pipeline.db.transaction() as sql:
        sql.execute("DELETE FROM instances")
    index = pipeline.assembler.index
    assert index.reindex_orphans(pipeline.spool, pipeline.clock.now) == 40
    assert index.reindex_orphans(pipeline.spool, pipeline.clock.now) == 0


def test_the_assembler_submits_when_the_quiet_period_ends_and_rings_the_worker(tmp_path: Path) -> None:
    """Not a poll interval later: it waits until the earliest pending series can be quiet."""
    settings = Settings()
    settings = dataclasses.replace(
        settings,
        assembly=dataclasses.replace(settings.assembly, quiet_seconds=0.5),
        storage=dataclasses.replace(settings.storage, state_dir=tmp_path),
    )
    layout = StateLayout(tmp_path)
    layout.create()
    db = Database(layout.database)
    spool, index, queue = Spool(layout, 0), InstanceIndex(db), JobQueue(db)
    receiver = StoreReceiver(spool, index, settings.storage.keep_sop_classes)
    for ds in PhantomSeries().datasets():
        assert receiver.receive(as_received(ds), "TEST") == Status.SUCCESS
    receiver.settle()
    assert index.earliest_pending_arrival() is not None
    stop = threading.Event()
    queued = Doorbell(stop)
    assembler = threading.Thread(target=Assembler(index, spool, queue, settings).run_forever, args=(stop, 600.0, queued))
    assembler.start()  # its first round comes before the quiet period ends
    try:
        assert queued.wait(60), "the worker's doorbell never rang (the assembler slept its 600 s poll)"
        assert [row["state"] for row in db.query("SELECT state FROM jobs")] == ["pending"]
        assert index.earliest_pending_arrival() is None
    finally:
        stop.set()
        assembler.join(timeout=10)
    assert not assembler.is_alive()


def test_a_doorbell_ends_a_wait_when_rung_and_not_after_the_stop() -> None:
    stop = threading.Event()
    bell = Doorbell(stop)
    assert bell.wait(0.01) is False
    bell.ring()
    assert bell.wait(60) is True
    assert bell.wait(0.01) is False  # one ring, one wake-up
    stop.set()
    assert bell.wait(60) is False  # returns at once: the node is stopping
