"""Faults around the node, each with its defined outcome: a full disk (a real small file system
the test mounts), a corrupted spool file, an analysis that runs out of memory, a series beyond
the configured limits, a destination that is down for a while.

The receiver is the node's own (real associations from dcmtk storescu); the stages run one step
at a time where the test needs to act between two steps, or on their own threads as ``serve``
runs them.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from conftest import free_port
from dicomnode.assembly import Assembler
from dicomnode.jobs.worker import Worker
from dicomnode.net.receiver import StoreReceiver
from dicomnode.net.scp import start_receiver
from dicomnode.node import Node, State
from dicomnode.settings import DicomDestination, FolderDestination, Settings
from dicomnode.spool.store import INDEX_HEADROOM_BYTES
from factories import PhantomSeries
from figures import record_figures
from inference import CTVolume, Findings, analyze
from receivers import leftover_temporaries, store_series
from peers import NODE_AET, StoreSCP, echo_ok, storescu, wait_until

FAR_FUTURE = 1e12  # an assembler clock past every quiet period


def settings_for(state_dir: Path, **sections: object) -> Settings:
    """The node's defaults, its state in ``state_dir``, no free-space floor, quick retries."""
    defaults = Settings()
    settings = dataclasses.replace(
        defaults,
        node=dataclasses.replace(defaults.node, ae_title=NODE_AET, port=free_port(), bind_address="127.0.0.1"),
        storage=dataclasses.replace(defaults.storage, state_dir=state_dir, min_free_mb=0),
        assembly=dataclasses.replace(defaults.assembly, quiet_seconds=0.5),
        jobs=dataclasses.replace(defaults.jobs, retry_delay_seconds=0),
        destinations=(FolderDestination(name="folder", path=state_dir.parent / "results"),),
    )
    return dataclasses.replace(settings, **sections)


def job_rows(state: State) -> list[dict]:
    return [dict(row) for row in state.db.query("SELECT * FROM jobs ORDER BY id")]


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, mounted for the test and unmounted after it (the tests run as root here
    and in CI; a machine where mounting is not allowed fails loudly rather than skipping)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path, leave_bytes: int) -> Path:
    """Write a file that leaves about ``leave_bytes`` free on the file system of ``directory``."""
    filler = directory / "filler"
    free = shutil.disk_usage(directory).free
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))
    return filler


def test_a_full_disk_answers_out_of_resources_and_recovers(tmp_path: Path, small_filesystem: Path) -> None:
    """The spool's file system fills up mid-series: the rest get 0xA700, what was acknowledged
    stays intact, and once space is back the scanner's resend completes the series. A disk
    that fills before the results are written postpones the job without using up its attempts."""
    settings = settings_for(small_filesystem / "state")
    state = State.open(settings)
    receiver = StoreReceiver(state.spool, state.index, settings.storage.keep_sop_classes)
    server = start_receiver(settings.node, receiver)
    series = PhantomSeries(seed=11)
    files = series.write(tmp_path / "series")
    try:
        # Room for a dozen slices above the headroom kept for the index rows of acknowledged ones.
        filler = fill(small_filesystem, leave_bytes=300_000 + INDEX_HEADROOM_BYTES)
        result = storescu(files, NODE_AET, settings.node.port, calling="SCANNER", check=False)
        stored = result.stderr.count("Received Store Response (Success)")
        refused = result.stderr.count("Received Store Response (Refused: OutOfResources)")
        assert 0 < stored < len(files) and stored + refused == len(files), result.stderr[-2000:]
        receiver.settle()
        indexed = state.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
        assert indexed == stored and len(state.spool.files()) == stored
        for relative in state.spool.files():  # every acknowledged file whole
            pydicom.dcmread(state.spool.absolute(relative)).pixel_array
        assert leftover_temporaries(state.layout) == []  # nothing half-written left
        assert echo_ok(NODE_AET, settings.node.port)

        filler.unlink()
        storescu(files, NODE_AET, settings.node.port, calling="SCANNER")  # the scanner's resend
        receiver.settle()
        assert len(state.spool.files()) == len(files)
    finally:
        server.shutdown()

    assert Assembler(state.index, state.spool, state.queue, settings).run_once(now=FAR_FUTURE) == 1
    worker = Worker(state.db, state.queue, state.index, state.spool, state.outbox, settings, analyze)
    filler = fill(small_filesystem, leave_bytes=64_000)  # room for the job claim, not for its results
    worker.run_once()
    [job] = job_rows(state)
    assert (job["state"], job["attempts"]) == ("pending", 0) and job["reason"].startswith("out of space")
    filler.unlink()
    worker.run_once(now=time.time() + 3600)
    [job] = job_rows(state)
    assert job["state"] == "done", job["reason"]
    state.db.close()
    record_figures("full_disk", filesystem_mib=16, acknowledged_before_full=stored, refused_with_0xA700=refused)


def test_a_corrupted_spool_file_fails_its_job_with_the_reason(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "state")
    state = State.open(settings)
    store_series(state.spool, state.index, PhantomSeries(seed=12))
    victim = state.spool.absolute(sorted(state.spool.files())[7])
    victim.write_bytes(victim.read_bytes()[:600])  # bit rot, a bad sector, someone's editor
    assert Assembler(state.index, state.spool, state.queue, settings).run_once(now=FAR_FUTURE) == 1
    Worker(state.db, state.queue, state.index, state.spool, state.outbox, settings, analyze).run_once()
    [job] = job_rows(state)
    assert job["state"] == "failed" and job["attempts"] == 1  # bad input: not retried
    assert job["reason"].startswith("VolumeError") and victim.name in job["reason"]
    state.db.close()


def test_an_analysis_out_of_memory_fails_the_job_and_the_node_keeps_receiving(tmp_path: Path) -> None:
    """The analysis raises MemoryError (what torch and numpy raise when an allocation fails):
    the job is retried a bounded number of times and failed with its reason; meanwhile the
    node goes on receiving and analyses the next series."""
    calls: list[int] = []

    def analysis_that_runs_out_of_memory_for_the_first_job(volume: CTVolume) -> Findings:
        calls.append(volume.hu.shape[0])
        if len(calls) <= settings.jobs.max_attempts:
            raise MemoryError("cannot allocate 17179869184 bytes")
        return analyze(volume)

    settings = settings_for(tmp_path / "state")
    node = Node(settings, analyze=analysis_that_runs_out_of_memory_for_the_first_job)
    node.start()
    try:
        first, second = PhantomSeries(seed=13), PhantomSeries(seed=14)
        storescu(first.write(tmp_path / "first"), NODE_AET, settings.node.port, calling="SCANNER")
        wait_until(lambda: {r["state"] for r in job_rows(node.state)} == {"failed"}, 120, 0.2, "the job to fail")
        storescu(second.write(tmp_path / "second"), NODE_AET, settings.node.port, calling="SCANNER")
        wait_until(lambda: len(job_rows(node.state)) == 2 and job_rows(node.state)[1]["state"] == "done", 300, 0.5, "the next job")
        failed, done = job_rows(node.state)
    finally:
        node.stop()
    assert failed["attempts"] == settings.jobs.max_attempts
    assert failed["reason"] == "MemoryError: cannot allocate 17179869184 bytes"
    assert done["series_uid"] == second.series_uid


def test_a_series_beyond_the_limits_is_refused_with_its_reason(tmp_path: Path) -> None:
    """Decided from the index alone: not one pixel of the series is read."""
    defaults = Settings().assembly
    settings = settings_for(tmp_path / "state", assembly=dataclasses.replace(defaults, max_slices=25))
    state = State.open(settings)
    store_series(state.spool, state.index, PhantomSeries(seed=15))
    assert Assembler(state.index, state.spool, state.queue, settings).run_once(now=FAR_FUTURE) == 1
    assert Worker(state.db, state.queue, state.index, state.spool, state.outbox, settings, analyze).run_once() is None
    [job] = job_rows(state)
    assert job["state"] == "rejected"
    assert job["reason"] == "size limits: 40 instances, at most 25 are analysed (assembly.max_slices)"
    state.db.close()


def test_results_wait_for_a_destination_that_is_down_and_arrive(tmp_path: Path) -> None:
    """The destination is down when the results are ready and stays down over several retries;
    the results wait in the outbox and arrive once it is back."""
    defaults = Settings()
    peer_port = free_port()
    settings = settings_for(
        tmp_path / "state",
        sender=dataclasses.replace(defaults.sender, retry_initial_seconds=0.5, retry_max_seconds=2.0),
        destinations=(DicomDestination(name="pacs", ae_title="RESULTS", host="127.0.0.1", port=peer_port),),
    )
    node = Node(settings, analyze=analyze)
    node.start()
    peer = None
    try:
        storescu(PhantomSeries(seed=16).write(tmp_path / "series"), NODE_AET, settings.node.port, calling="SCANNER")

        def attempts() -> int:
            rows = node.state.db.query("SELECT MIN(attempts) AS n FROM outbox WHERE state = 'pending'")
            return rows[0]["n"] or 0

        wait_until(lambda: attempts() >= 4, 300, 0.5, "several attempts at the destination")
        down_for = attempts()
        peer = StoreSCP(tmp_path / "pacs", aet="RESULTS", port=peer_port)
        wait_until(lambda: node.state.outbox.counts()["pending"] == 0, 60, 0.5, "the outbox to drain")
        counts = node.state.outbox.counts()
    finally:
        node.stop()
        if peer is not None:
            peer.stop()
    assert counts["failed"] == 0 and counts["sent"] == len(peer.files()) > 0
    record_figures("destination_down", failed_attempts_before_back=down_for, delivered=counts["sent"])
