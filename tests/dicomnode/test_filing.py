"""Acknowledged instances are filed after the answer: what the filer cannot file stays staged,
and the next start files it; what an earlier process staged and would not have kept is removed."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pydicom
import pytest

from dicomnode.db import Database
from dicomnode.layout import StateLayout
from dicomnode.net.part10 import ReceivedFile
from dicomnode.net.receiver import StoreReceiver
from dicomnode.settings import StorageSettings
from dicomnode.spool import InstanceIndex, Spool
from dicomnode.spool.staging import AHEAD_PREFIX
from dicomnode.status import Status
from factories import PhantomSeries
from receivers import file_bytes, leftover_temporaries


class State:
    """A state directory and a receiver on it, as a (re)started node has them."""

    def __init__(self, root: Path) -> None:
        self.layout = StateLayout(root)
        self.layout.create()
        self.index = InstanceIndex(Database(self.layout.database))
        self.spool = Spool(self.layout, min_free_bytes=0)

    def receiver(self) -> StoreReceiver:
        return StoreReceiver(self.spool, self.index, StorageSettings().keep_sop_classes)

    def indexed(self) -> list[str]:
        return [row["sop_instance_uid"] for row in self.index.db.query("SELECT sop_instance_uid FROM instances")]

    def leave_staged(self, name: str, data: bytes) -> Path:
        """A file a stopped process staged and did not file."""
        path = self.layout.temp / f"{AHEAD_PREFIX}1-0a0a0a0a-{name}.tmp"
        path.write_bytes(data)
        return path


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(tmp_path / "state")


def test_an_acknowledged_instance_the_filer_cannot_move_is_filed_at_the_next_start(state: State, caplog) -> None:  # type: ignore[no-untyped-def]
    dataset = PhantomSeries(slices=1, rows=16, columns=16).datasets()[0]
    data = file_bytes(dataset)
    blocker = state.layout.spool / dataset.StudyInstanceUID  # a file where its study's folder goes
    blocker.write_bytes(b"")
    receiver = state.receiver()
    with caplog.at_level(logging.ERROR):
        assert receiver.receive(ReceivedFile.from_file(data), "TEST") == Status.SUCCESS
        receiver.settle()
    receiver.close()
    assert "was acknowledged but could not be filed" in caplog.text
    assert state.indexed() == [] and state.spool.files() == []
    (left,) = leftover_temporaries(state.layout)  # staged, whole, where the next start looks
    assert left.read_bytes() == data

    blocker.unlink()
    restarted = state.receiver()
    assert restarted.recover() == 1
    restarted.close()
    assert state.indexed() == [dataset.SOPInstanceUID]
    (relative,) = state.spool.files()
    assert state.spool.absolute(relative).read_bytes() == data
    assert leftover_temporaries(state.layout) == []


def test_the_next_start_removes_staged_files_it_would_not_have_kept(state: State, caplog) -> None:  # type: ignore[no-untyped-def]
    first, second = (file_bytes(ds) for ds in PhantomSeries(slices=2, rows=16, columns=16).datasets())
    receiver = state.receiver()
    assert receiver.receive(ReceivedFile.from_file(first), "TEST") == Status.SUCCESS
    receiver.close()
    state.leave_staged("0", first)  # filed already: a resend the stop cut off
    state.leave_staged("1", second[: len(second) // 2])  # cut short by the stop: never acknowledged
    state.leave_staged("2", b"not DICOM at all")
    restarted = state.receiver()
    with caplog.at_level(logging.WARNING):
        assert restarted.recover() == 3
    restarted.close()
    assert state.indexed() == [pydicom.dcmread(io.BytesIO(first)).SOPInstanceUID]
    assert len(state.spool.files()) == 1 and leftover_temporaries(state.layout) == []
    assert caplog.text.count("staged by an earlier process: not an instance") == 2  # the half and the non-DICOM
    assert "runs past the end" in caplog.text  # why the half instance is not one
