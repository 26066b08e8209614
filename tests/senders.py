"""The sending half of a node over a real state directory (database, outbox, sender), for tests
of delivery that hand the outbox results directly instead of analysing a series."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from dicomnode.db import Database
from dicomnode.layout import StateLayout
from dicomnode.results import ResultObject
from dicomnode.send import Outbox, Sender
from dicomnode.settings import DicomDestination, FolderDestination, NodeSettings, SenderSettings, Settings

T0 = 1_000_000.0  # the test clock: enqueue time, rounds at T0 + n
POLICY = SenderSettings(retry_initial_seconds=1.0, retry_max_seconds=4.0, max_refusals=2)


class Node:
    """The sending half of a node over a state directory: database, outbox, sender."""

    def __init__(self, root: Path, *destinations: DicomDestination | FolderDestination, policy: SenderSettings = POLICY):
        self.settings = Settings(
            node=NodeSettings(ae_title="DICOMNODE", network_timeout_seconds=5.0),
            sender=policy,
            destinations=destinations,
        )
        self.layout = StateLayout(root)
        self.layout.create()
        self.database = Database(self.layout.database)
        self.outbox = Outbox(self.database, self.layout, self.settings)
        self.sender = Sender(self.outbox, self.settings)

    def submit(self, job_id: int, datasets: list[Dataset]) -> list[Path]:
        """What the worker does: store, then enqueue in the transaction that ends the job."""
        files = self.outbox.store(job_id, as_results(datasets))
        with self.database.transaction() as connection:
            self.outbox.enqueue(connection, job_id, files, now=T0)
        return [self.layout.outbox / file.path for file in files]

    def rows(self) -> list[dict]:
        return [dict(row) for row in self.database.query("SELECT * FROM outbox ORDER BY id")]


def as_results(datasets: list[Dataset]) -> list[ResultObject]:
    """Datasets as result objects (reports, to every destination: which destination wants which
    kind of object is tested on its own)."""
    return [ResultObject(dataset, "sr") for dataset in datasets]
