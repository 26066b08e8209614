"""The spool's two-step write: staged durably under a temporary name, then kept under the
instance's own name or removed; temporary files made ahead of need never count as left-overs."""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path

import pydicom
import pytest

from dicomnode.layout import StateLayout
from dicomnode.spool import OutOfSpace, Spool, read_header
from dicomnode.spool.staging import AHEAD, AHEAD_PREFIX, StagedFile, write_all
from factories import PhantomSeries
from peers import wait_until
from receivers import leftover_temporaries


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    layout = StateLayout(tmp_path / "state")
    layout.create()
    return Spool(layout, min_free_bytes=0)


def encoded_slice() -> tuple[bytes, object]:
    dataset = PhantomSeries(slices=1, rows=16, columns=16).datasets()[0]
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue(), read_header(dataset)


def ahead_files(spool: Spool) -> list[Path]:
    return sorted(spool.layout.temp.glob(AHEAD_PREFIX + "*"))


def wait_for_files_made_ahead(spool: Spool) -> None:
    """Until the files made ahead are ready for staging (on disk, their names durable)."""
    wait_until(lambda: spool.made_ahead == AHEAD, 10, what="files made ahead")
    assert len(ahead_files(spool)) == AHEAD


def test_a_kept_instance_is_in_its_place_and_nothing_is_left_over(spool: Spool) -> None:
    data, header = encoded_slice()
    staged = spool.stage([data])
    assert staged.error is None and staged.path is not None and staged.path.read_bytes() == data
    relative, size = spool.keep(staged, header)
    spool.done(staged)
    assert spool.absolute(relative).read_bytes() == data and size == len(data)
    assert spool.files() == [relative] and leftover_temporaries(spool.layout) == []
    wait_for_files_made_ahead(spool)
    assert all(path.stat().st_size == 0 for path in ahead_files(spool))


def test_files_made_ahead_are_used_and_replaced(spool: Spool) -> None:
    data, header = encoded_slice()
    spool.done(spool.stage([data]))  # the first write makes its own file, and asks for more
    wait_for_files_made_ahead(spool)
    ready = set(ahead_files(spool))
    staged = spool.stage([data])
    used = staged.path
    assert used in ready  # written into one made ahead
    spool.done(staged)
    assert used is not None and not used.exists()
    wait_for_files_made_ahead(spool)


def test_a_staged_instance_not_kept_is_removed(spool: Spool) -> None:
    data, _ = encoded_slice()
    staged = spool.stage([data])
    path = staged.path
    spool.done(staged)
    assert path is not None and not path.exists() and leftover_temporaries(spool.layout) == []


def test_closing_removes_the_files_made_ahead_and_stops_their_thread(tmp_path: Path) -> None:
    others = set(threading.enumerate())  # other tests' spools may still have theirs
    layout = StateLayout(tmp_path / "state")
    layout.create()
    spool = Spool(layout, min_free_bytes=0)
    data, _ = encoded_slice()
    spool.done(spool.stage([data]))
    wait_for_files_made_ahead(spool)
    spool.close()
    assert ahead_files(spool) == []
    assert not [thread for thread in set(threading.enumerate()) - others if thread.name.startswith("staging")]


def test_a_failed_staging_says_why_and_a_full_disk_is_out_of_space(spool: Spool) -> None:
    data, _ = encoded_slice()
    assert spool.staging_failure(spool.stage([data])) is None
    full = StagedFile(None, 0, OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(spool.staging_failure(full), OutOfSpace)
    broken = StagedFile(None, 0, OSError(errno.EIO, "Input/output error"))
    failure = spool.staging_failure(broken)
    assert failure is broken.error and not isinstance(failure, OutOfSpace)


def test_the_free_space_floor_is_checked_before_writing(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "state")
    layout.create()
    with pytest.raises(OutOfSpace, match="floor"):
        Spool(layout, min_free_bytes=2**62).ensure_room(1)


def test_start_up_clears_temporaries_but_keeps_staged_instances(spool: Spool) -> None:
    """Left by a killed process: an empty file made ahead (removed), a staged instance (kept
    for the receiver to file: it may have been acknowledged) and an outbox file being written
    (removed, and counted)."""
    (spool.layout.temp / f"{AHEAD_PREFIX}1-0a0a0a0a-0.tmp").touch()
    staged = spool.layout.temp / f"{AHEAD_PREFIX}1-0a0a0a0a-1.tmp"
    staged.write_bytes(b"an instance")
    (spool.layout.temp / ".outbox-file.tmp").write_bytes(b"half a result")
    assert spool.clear_temporaries() == 1
    assert list(spool.layout.temp.iterdir()) == [staged]
    assert spool.staged_leftovers() == [StagedFile(staged, len(b"an instance"))]


def written_with_write_all(path: Path, parts: list[bytes]) -> bytes:
    """What ``write_all`` puts in a new file at ``path`` (after checking the count it returns)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        assert write_all(descriptor, parts) == sum(map(len, parts))
    finally:
        os.close(descriptor)
    return path.read_bytes()


def test_an_instance_in_many_fragments_is_written_whole(tmp_path: Path) -> None:
    """More fragments than one ``writev`` takes (a data set sent in small PDUs) are written in
    order."""
    parts = [bytes([number % 251]) * (1 + number % 7) for number in range(3000)]
    assert written_with_write_all(tmp_path / "instance", parts) == b"".join(parts)


def test_a_write_cut_short_goes_on_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may write less than asked (a signal, a file size limit); this one writes
    at most 70 kB a call, so the cuts fall inside fragments and between them."""
    real_writev = os.writev

    def short_writev(descriptor: int, buffers: list[memoryview]) -> int:
        allowed, cut = 70_000, []
        for buffer in buffers:
            cut.append(buffer[:allowed])
            allowed -= len(cut[-1])
        return real_writev(descriptor, [buffer for buffer in cut if len(buffer)])

    monkeypatch.setattr(os, "writev", short_writev)
    parts = [os.urandom(100_000), b"", os.urandom(30_000), os.urandom(300_000)]
    assert written_with_write_all(tmp_path / "instance", parts) == b"".join(parts)
