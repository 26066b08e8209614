"""The state directory holds patient data: its files and directories are the node user's alone,
whatever the umask of whoever started the node."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom import dcmwrite

from dicomnode.node import State
from dicomnode.results import ResultObject
from dicomnode.send.folder import copy_files
from dicomnode.settings import FolderDestination, Settings, StorageSettings
from factories import PhantomSeries
from receivers import store_series


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The umask of a shell (022): without explicit modes, files would be world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def encoded(dataset) -> bytes:  # type: ignore[no-untyped-def]
    buffer = DicomBytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and of everything under it, by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_spool_outbox_and_index_are_private(tmp_path: Path, permissive_umask: None) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)  # made by hand, wider than the node wants
    settings = Settings(storage=StorageSettings(state_dir=state_dir, min_free_mb=0))
    state = State.open(settings)
    series = PhantomSeries(slices=3)
    store_series(state.spool, state.index, series)
    state.outbox.store(1, [ResultObject(series.datasets()[0], "key-images")])
    found = modes(state_dir)  # while the database is open: its -wal and -shm files exist
    state.db.close()
    assert any(name.endswith(".dcm") and name.startswith("spool/") for name in found)
    assert any(name.startswith("outbox/1/") for name in found)
    assert {"state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm"} <= set(found)
    wider = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert not wider, f"readable by others: {wider}"


def test_a_folder_destination_follows_the_umask(tmp_path: Path, permissive_umask: None) -> None:
    """Results copied to a folder are for other programs to read (a PACS import, a viewer)."""
    source = tmp_path / "result.dcm"
    dataset = PhantomSeries(slices=1).datasets()[0]
    source.write_bytes(encoded(dataset))
    destination = FolderDestination(name="folder", path=tmp_path / "results")
    [outcome] = copy_files(destination, [source])
    assert outcome.delivered
    [copied] = [p for p in destination.path.rglob("*.dcm")]
    assert stat.S_IMODE(copied.stat().st_mode) == 0o644
