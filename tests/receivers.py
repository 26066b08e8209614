"""The node's receiver started in-process, for tests that talk to it over the network, and
handed a series directly, for tests about what happens after the network.

In-process (not ``dicomnode serve``) so that a test can look at the spool, the index and the
server's live associations while the receiver serves.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pydicom

from conftest import free_port
from dicomnode.db import Database
from dicomnode.layout import StateLayout
from dicomnode.net.part10 import ReceivedFile
from dicomnode.net.receiver import StoreReceiver
from dicomnode.net.scp import start_receiver
from dicomnode.net.server import AssociationServer
from dicomnode.settings import NodeSettings, StorageSettings
from dicomnode.spool import InstanceIndex, Spool
from dicomnode.spool.staging import AHEAD_PREFIX
from dicomnode.status import Status
from factories import PhantomSeries


@dataclasses.dataclass
class RunningReceiver:
    """What a test looks at of a running receiver, each once what was acknowledged is filed."""

    settings: NodeSettings
    layout: StateLayout
    spool: Spool
    index: InstanceIndex
    receiver: StoreReceiver

    def indexed(self) -> int:
        self.receiver.settle()
        return self.index.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]

    def spool_files(self) -> list[Path]:
        self.receiver.settle()
        return self.spool.files()

    def temporaries(self) -> list[Path]:
        self.receiver.settle()
        return leftover_temporaries(self.layout)


def leftover_temporaries(layout: StateLayout) -> list[Path]:
    """Temporary files holding anything: the empty ones the spool makes ahead of need are not
    left-overs (a staged instance that was not kept would be one: it holds its bytes)."""
    return [
        path for path in layout.temp.iterdir() if not (path.name.startswith(AHEAD_PREFIX) and path.stat().st_size == 0)
    ]


def start_in_process(tmp_path: Path, min_free_mb: int = 0, **node: Any) -> tuple[RunningReceiver, AssociationServer]:
    """A receiver on a free loopback port, with ``node`` overriding NodeSettings fields, its state
    in its own folder under ``tmp_path``; stop it with ``server.shutdown()``."""
    settings = NodeSettings(**{"ae_title": "TESTNODE", "bind_address": "127.0.0.1", "port": free_port(), **node})
    layout = StateLayout(tmp_path / f"state-{settings.port}")
    layout.create()
    db = Database(layout.database)
    spool = Spool(layout, min_free_mb * 2**20)
    index = InstanceIndex(db)
    receiver = StoreReceiver(spool, index, StorageSettings().keep_sop_classes)
    server = start_receiver(settings, receiver)
    return RunningReceiver(settings, layout, spool, index, receiver), server


def file_bytes(dataset: pydicom.Dataset) -> bytes:
    """``dataset`` as a DICOM file (preamble, file meta, data set), as a peer would send it."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def as_received(dataset: pydicom.Dataset) -> ReceivedFile:
    """``dataset`` as the acceptor hands it to the receiver (a file in one fragment)."""
    return ReceivedFile.from_file(file_bytes(dataset))


def store_series(spool: Spool, index: InstanceIndex, series: PhantomSeries, calling_ae: str = "TEST") -> None:
    """Hand every slice of ``series`` to the receiver as the C-STORE handler does (the encoded
    file), without a network in between; each must be stored."""
    receiver = StoreReceiver(spool, index, StorageSettings().keep_sop_classes)
    try:
        for dataset in series.datasets():
            assert receiver.receive(as_received(dataset), calling_ae) == Status.SUCCESS
    finally:
        receiver.close()
