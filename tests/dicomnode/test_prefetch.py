"""Reading ahead: settled series are decoded while the worker is idle, and a job takes only
slices whose files are unchanged; its volume is the one it would have built itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from dicomnode.assembly import Assembler
from dicomnode.jobs.prefetch import BATCH, SETTLE_SECONDS, Prefetcher
from dicomnode.jobs.worker import Worker
from dicomnode.node import State
from dicomnode.settings import Settings
from dicomnode.spool import InstanceIndex, Spool, read_header
from dicomnode.volume import DecodedSlice, build_volume
from factories import PhantomSeries
from receivers import store_series
from inference import CTVolume, Findings, analyze


def opened(tmp_path: Path) -> tuple[Settings, State]:
    defaults = Settings()
    settings = dataclasses.replace(
        defaults,
        storage=dataclasses.replace(defaults.storage, state_dir=tmp_path / "state", min_free_mb=0),
        assembly=dataclasses.replace(defaults.assembly, quiet_seconds=0),
    )
    return settings, State.open(settings)


def received_at(state: State) -> float:
    return float(state.db.query("SELECT MAX(last_received_at) AS t FROM series")[0]["t"])


def read_all(prefetcher: Prefetcher, now: float) -> int:
    """Steps until there is nothing left to read; how many steps read something."""
    steps = 0
    while prefetcher.step(now) == 0.0:
        steps += 1
    return steps


def spool_paths(state: State) -> list[Path]:
    return sorted(state.spool.absolute(p) for p in state.spool.files())


def test_a_settled_series_is_read_ahead_and_taken_once(tmp_path: Path) -> None:
    _, state = opened(tmp_path)
    store_series(state.spool, state.index, PhantomSeries(slices=3 * BATCH))
    arrived = received_at(state)
    prefetcher = Prefetcher(state.index, state.spool)

    wait = prefetcher.step(arrived)  # still arriving: nothing is read, look again when it settles
    assert 0.0 < wait <= SETTLE_SECONDS
    assert read_all(prefetcher, arrived + SETTLE_SECONDS) == 3  # a batch per step
    assert prefetcher.step(arrived + SETTLE_SECONDS) == float("inf")  # all read, nothing else waits

    paths = spool_paths(state)
    taken = prefetcher.take(paths)
    assert set(taken) == set(paths)
    assert all(slice_.hu.dtype == np.int16 for slice_ in taken.values())  # as the volume holds them
    np.testing.assert_array_equal(build_volume(paths, taken).volume.hu, build_volume(paths).volume.hu)
    assert prefetcher.take(paths) == {}  # taken once


def test_nothing_is_read_ahead_while_another_series_arrives(tmp_path: Path) -> None:
    """A settled series waits while the next one streams in (reading would slow receiving)."""
    _, state = opened(tmp_path)
    store_series(state.spool, state.index, PhantomSeries(slices=6, seed=1))
    settled_at = received_at(state) + SETTLE_SECONDS
    arriving = PhantomSeries(slices=6, seed=2)
    store_series(state.spool, state.index, arriving)
    state.index.touch(read_header(arriving.datasets()[0]), settled_at)  # still arriving then
    prefetcher = Prefetcher(state.index, state.spool)

    wait = prefetcher.step(settled_at)
    assert wait == SETTLE_SECONDS  # nothing read: look again once the arrivals stop
    assert prefetcher.take(spool_paths(state)) == {}
    assert read_all(prefetcher, settled_at + wait) > 0
    assert set(prefetcher.take(spool_paths(state))) == set(spool_paths(state))


def test_a_file_changed_after_it_was_read_is_not_taken(tmp_path: Path) -> None:
    _, state = opened(tmp_path)
    store_series(state.spool, state.index, PhantomSeries(slices=6))
    prefetcher = Prefetcher(state.index, state.spool)
    read_all(prefetcher, received_at(state) + SETTLE_SECONDS)
    paths = spool_paths(state)
    changed = pydicom.dcmread(paths[2])
    changed.RescaleIntercept = -1000  # other HU, same size: the modification time tells
    changed.save_as(paths[2])
    taken = prefetcher.take(paths)
    assert paths[2] not in taken and len(taken) == len(paths) - 1
    assert build_volume(paths, taken).volume.hu.tolist() == build_volume(paths).volume.hu.tolist()


def test_unreadable_files_are_left_to_the_job(tmp_path: Path) -> None:
    _, state = opened(tmp_path)
    store_series(state.spool, state.index, PhantomSeries(slices=4))
    paths = spool_paths(state)
    damaged = pydicom.dcmread(paths[1])
    damaged.PixelData = damaged.PixelData[:100]
    damaged.save_as(paths[1])
    prefetcher = Prefetcher(state.index, state.spool)
    assert read_all(prefetcher, received_at(state) + SETTLE_SECONDS) == 1  # tried once, not again and again
    assert set(prefetcher.take(paths)) == set(paths) - {paths[1]}


def test_memory_is_bounded(tmp_path: Path) -> None:
    _, state = opened(tmp_path)
    store_series(state.spool, state.index, PhantomSeries(slices=3 * BATCH))
    plane_bytes = 96 * 96 * 2  # the phantom's planes as int16
    prefetcher = Prefetcher(state.index, state.spool, budget_bytes=BATCH * plane_bytes)
    assert read_all(prefetcher, received_at(state) + SETTLE_SECONDS) == 1  # one batch, then the budget is spent
    assert len(prefetcher.take(spool_paths(state))) == BATCH


class CountingPrefetcher(Prefetcher):
    """Records how many slices each job took, and what it handed out."""

    def __init__(self, index: InstanceIndex, spool: Spool) -> None:
        super().__init__(index, spool)
        self.taken: list[int] = []
        self.handed_out: list[dict[Path, DecodedSlice]] = []

    def take(self, paths: Sequence[Path]) -> dict[Path, DecodedSlice]:
        decoded = super().take(paths)
        self.taken.append(len(decoded))
        self.handed_out.append(decoded)
        return decoded


def test_the_worker_reads_ahead_when_idle_and_its_job_uses_the_slices(tmp_path: Path) -> None:
    settings, state = opened(tmp_path)
    store_series(state.spool, state.index, PhantomSeries())
    prefetcher = CountingPrefetcher(state.index, state.spool)
    volumes: list[CTVolume] = []

    def analysis(volume: CTVolume) -> Findings:
        # The planes read ahead are let go once the volume is built: not held through the analysis.
        assert prefetcher.handed_out and not any(prefetcher.handed_out)
        volumes.append(volume)
        return analyze(volume)

    worker = Worker(state.db, state.queue, state.index, state.spool, state.outbox, settings, analysis, prefetcher)
    read_all(prefetcher, received_at(state) + SETTLE_SECONDS)
    assert Assembler(state.index, state.spool, state.queue, settings).run_once(now=1e12) == 1
    assert worker.run_once() is not None
    assert prefetcher.taken == [len(spool_paths(state))]  # every slice came from the read-ahead
    np.testing.assert_array_equal(volumes[0].hu, build_volume(spool_paths(state)).volume.hu)
    assert state.db.query("SELECT state FROM jobs")[0]["state"] == "done"
