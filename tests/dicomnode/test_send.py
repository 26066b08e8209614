"""The sending stage against real peers: dcmtk storescp, a refusing pynetdicom SCP, a folder.

Time is passed explicitly (``now=``) so that backoff is tested without sleeping.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import MRImageStorage

from conftest import free_port, require_tool
from dicomnode.send import DestinationUnavailable, backoff_seconds, copy_files, echo
from dicomnode.settings import (
    DicomDestination,
    FolderDestination,
)
from factories import PhantomSeries
from senders import POLICY, T0, Node, as_results

STORESCP = "/usr/bin/storescp"


# --- helpers -------------------------------------------------------------------------------


def is_listening(port: int) -> bool:
    """True when a socket listens on ``port``, seen in /proc (Linux) without connecting to it.

    A probe connection is not harmless: storescp --refuse mishandles an empty connection and
    then drops the next real association without answering.
    """
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Block until the started peer listens on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"peer exited with {process.returncode} before listening on {port}")
        if is_listening(port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class Storescp:
    """A real dcmtk storescp on loopback, stopped by its PID at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        require_tool(STORESCP)
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen] = []

    def start(self, port: int, *options: str, ae_title: str = "PACS") -> Path:
        output = self.tmp_path / f"storescp-{port}-{len(self.processes)}"
        output.mkdir()
        log = open(self.tmp_path / f"{output.name}.log", "wb")
        process = subprocess.Popen(
            [STORESCP, "-od", str(output), "-aet", ae_title, *options, str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        wait_listening(port, process)
        return output

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Storescp]:
    peers = Storescp(tmp_path)
    yield peers
    peers.stop()


@pytest.fixture
def pynetdicom_scp() -> Iterator[Callable[..., list[Dataset]]]:
    """Start a pynetdicom storage SCP answering ``status`` to every C-STORE; returns what it got."""
    servers = []

    def start(
        port: int, status: int, sop_classes: Sequence[str] = (CTImageStorage,), **ae_options: object
    ) -> list[Dataset]:
        received: list[Dataset] = []

        def handle_store(event: evt.Event) -> int:
            received.append(event.dataset)
            return status

        ae = AE(ae_title="PEER")
        for key, value in ae_options.items():
            setattr(ae, key, value)
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class)
        servers.append(
            ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
        )
        return received

    yield start
    for server in servers:
        server.shutdown()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta (what C-STORE carries)."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def received_by_uid(directory: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): path for path in directory.iterdir()}


def dicom_destination(port: int, ae_title: str = "PACS", name: str = "pacs") -> DicomDestination:
    return DicomDestination(name=name, ae_title=ae_title, host="127.0.0.1", port=port)


@pytest.fixture
def series() -> list[Dataset]:
    return PhantomSeries(slices=4, rows=32, columns=32).datasets()


# --- delivery to a real peer ---------------------------------------------------------------


def test_delivers_byte_identical_once(tmp_path: Path, storescp: Storescp, series: list[Dataset]) -> None:
    port = free_port()
    received_dir = storescp.start(port)
    node = Node(tmp_path / "state", dicom_destination(port))
    paths = node.submit(7, series)
    expected = {str(ds.SOPInstanceUID): dataset_bytes(path) for ds, path in zip(series, paths)}

    assert node.sender.run_once(now=T0) == len(series)

    received = received_by_uid(received_dir)
    assert set(received) == set(expected)
    for uid, path in received.items():
        assert dataset_bytes(path) == expected[uid]
    assert all(row["state"] == "sent" and row["sent_at"] == T0 for row in node.rows())
    assert not (node.layout.outbox / "7").exists()  # files of a finished job are removed

    assert node.sender.run_once(now=T0 + 3600) == 0
    assert len(list(received_dir.iterdir())) == len(series)
    assert node.outbox.counts() == {"pending": 0, "sent": len(series), "failed": 0}


def test_compressed_file_offered_in_its_own_transfer_syntax(tmp_path: Path, storescp: Storescp) -> None:
    dataset = PhantomSeries(slices=1, rows=32, columns=32).datasets()[0]
    dataset.compress(RLELossless)
    port = free_port()
    received_dir = storescp.start(port, "+xa")  # accepts RLE
    node = Node(tmp_path / "state", dicom_destination(port))
    node.submit(1, [dataset])

    assert node.sender.run_once(now=T0) == 1
    (received,) = received_dir.iterdir()
    assert pydicom.dcmread(received).file_meta.TransferSyntaxUID == RLELossless


def test_compressed_file_the_peer_does_not_accept_is_refused(tmp_path: Path, storescp: Storescp) -> None:
    """Sent as stored or not at all: the node does not decompress results on the way out."""
    dataset = PhantomSeries(slices=1, rows=32, columns=32).datasets()[0]
    dataset.compress(RLELossless)
    port = free_port()
    received_dir = storescp.start(port)  # uncompressed only
    node = Node(tmp_path / "state", dicom_destination(port))
    node.submit(1, [dataset])

    node.sender.run_once(now=T0)
    node.sender.run_once(now=T0 + 1)
    (row,) = node.rows()
    assert (row["state"], row["refusals"]) == ("failed", 2)
    assert "RLE Lossless" in row["last_error"]
    assert list(received_dir.iterdir()) == []


def test_peer_accepting_only_implicit_vr_gets_the_same_dataset(
    tmp_path: Path, storescp: Storescp, series: list[Dataset]
) -> None:
    port = free_port()
    received_dir = storescp.start(port, "+xi")  # implicit VR little endian only
    node = Node(tmp_path / "state", dicom_destination(port))
    node.submit(1, series)

    assert node.sender.run_once(now=T0) == len(series)
    received = received_by_uid(received_dir)
    for original in series:
        copy = pydicom.dcmread(received[str(original.SOPInstanceUID)])
        assert copy.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert copy == original  # elements and values, whatever the encoding


def test_destination_down_is_retried_with_backoff_until_back(
    tmp_path: Path, storescp: Storescp, series: list[Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens here yet
    node = Node(tmp_path / "state", dicom_destination(port))
    node.submit(1, series)

    with caplog.at_level(logging.WARNING, logger="dicomnode.send"):
        assert node.sender.run_once(now=T0) == 0
    assert "unavailable" in caplog.text and "cannot connect" in caplog.text
    assert {(r["state"], r["attempts"], r["next_attempt_at"]) for r in node.rows()} == {("pending", 1, T0 + 1)}

    assert node.sender.run_once(now=T0 + 0.5) == 0  # not due yet: no new attempt
    assert {r["attempts"] for r in node.rows()} == {1}
    assert node.sender.run_once(now=T0 + 1) == 0
    assert {(r["attempts"], r["next_attempt_at"]) for r in node.rows()} == {(2, T0 + 1 + 2)}
    assert {r["refusals"] for r in node.rows()} == {0}  # unavailability is not a refusal

    received_dir = storescp.start(port)
    assert node.sender.run_once(now=T0 + 2) == 0  # still backing off
    assert node.sender.run_once(now=T0 + 3) == len(series)
    assert len(list(received_dir.iterdir())) == len(series)


def test_rejected_association_is_unavailable_with_reason(
    tmp_path: Path, storescp: Storescp, series: list[Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    storescp.start(port, "--refuse")
    node = Node(tmp_path / "state", dicom_destination(port))
    node.submit(1, series)

    with caplog.at_level(logging.WARNING, logger="dicomnode.send"):
        assert node.sender.run_once(now=T0) == 0
    assert "association rejected" in caplog.text
    for row in node.rows():
        assert (row["state"], row["attempts"], row["refusals"]) == ("pending", 1, 0)
        assert "Rejected Permanent" in row["last_error"]


def test_calling_ae_title_not_recognised_is_reported(
    tmp_path: Path, pynetdicom_scp: Callable[..., list[Dataset]], series: list[Dataset]
) -> None:
    port = free_port()
    pynetdicom_scp(port, 0x0000, require_calling_aet=["SOMEONEELSE"])
    node = Node(tmp_path / "state", dicom_destination(port, ae_title="PEER"))
    node.submit(1, series[:1])

    assert node.sender.run_once(now=T0) == 0
    (row,) = node.rows()
    assert row["state"] == "pending" and "Calling AE title not recognised" in row["last_error"]


def test_association_aborted_mid_batch_stays_pending(tmp_path: Path, storescp: Storescp, series: list[Dataset]) -> None:
    port = free_port()
    storescp.start(port, "--abort-after")
    node = Node(tmp_path / "state", dicom_destination(port))
    node.submit(1, series)

    assert node.sender.run_once(now=T0) == 0
    assert {(r["state"], r["attempts"], r["refusals"]) for r in node.rows()} == {("pending", 1, 0)}


@pytest.mark.parametrize("status", [0xA700, 0xC000], ids=lambda status: f"0x{status:04X}")
def test_refused_object_fails_after_max_refusals(
    tmp_path: Path,
    pynetdicom_scp: Callable[..., list[Dataset]],
    series: list[Dataset],
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    received = pynetdicom_scp(port, status)
    node = Node(tmp_path / "state", dicom_destination(port, ae_title="PEER"))
    node.submit(3, series[:2])

    assert node.sender.run_once(now=T0) == 0
    for row in node.rows():
        assert (row["state"], row["refusals"], row["attempts"]) == ("pending", 1, 0)
        assert f"0x{status:04X}" in row["last_error"]
        assert row["next_attempt_at"] == T0 + 1

    with caplog.at_level(logging.ERROR, logger="dicomnode.send"):
        assert node.sender.run_once(now=T0 + 1) == 0
    assert {(r["state"], r["refusals"]) for r in node.rows()} == {("failed", 2)}
    assert "giving up" in caplog.text
    assert not (node.layout.outbox / "3").exists()  # every row final: files removed, rows kept

    node.sender.run_once(now=T0 + 10_000)
    assert len(received) == 4  # two files, two attempts each, never again
    assert node.outbox.counts() == {"pending": 0, "sent": 0, "failed": 2}


def test_peer_supporting_none_of_the_sop_classes_refuses_them(
    tmp_path: Path, pynetdicom_scp: Callable[..., list[Dataset]], series: list[Dataset]
) -> None:
    port = free_port()
    pynetdicom_scp(port, 0x0000, sop_classes=[MRImageStorage])
    node = Node(tmp_path / "state", dicom_destination(port, ae_title="PEER"))
    node.submit(1, series[:1])

    node.sender.run_once(now=T0)
    (row,) = node.rows()
    assert (row["state"], row["refusals"], row["attempts"]) == ("pending", 1, 0)
    assert "accepted none" in row["last_error"]
    node.sender.run_once(now=T0 + 1)
    assert node.rows()[0]["state"] == "failed"


def test_warning_status_counts_as_delivered(
    tmp_path: Path, pynetdicom_scp: Callable[..., list[Dataset]], series: list[Dataset]
) -> None:
    port = free_port()
    received = pynetdicom_scp(port, 0xB000)
    node = Node(tmp_path / "state", dicom_destination(port, ae_title="PEER"))
    node.submit(1, series)

    assert node.sender.run_once(now=T0) == len(series)
    assert len(received) == len(series)
    assert node.outbox.counts()["sent"] == len(series)


def test_echo(storescp: Storescp) -> None:
    port = free_port()
    storescp.start(port)
    assert echo(dicom_destination(port), "DICOMNODE", timeout=5.0) == 0x0000
    with pytest.raises(DestinationUnavailable, match="cannot connect"):
        echo(dicom_destination(free_port()), "DICOMNODE", timeout=5.0)


# --- folder destination --------------------------------------------------------------------


def test_folder_destination_is_atomic_and_idempotent(tmp_path: Path, series: list[Dataset]) -> None:
    folder = FolderDestination(name="folder", path=tmp_path / "results")
    node = Node(tmp_path / "state", folder)
    paths = node.submit(1, series)
    originals = {path.name: path.read_bytes() for path in paths}
    kept = tmp_path / "kept"
    kept.mkdir()
    for name, data in originals.items():
        (kept / name).write_bytes(data)

    assert node.sender.run_once(now=T0) == len(series)
    study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    written = sorted((folder.path / study / series_uid).iterdir())
    assert [path.name for path in written] == sorted(originals)
    assert all(path.read_bytes() == originals[path.name] for path in written)

    outcomes = copy_files(folder, sorted(kept.iterdir()))  # the same objects again
    assert all(outcome.delivered for outcome in outcomes)
    assert sorted((folder.path / study / series_uid).iterdir()) == written
    assert [p for p in folder.path.rglob("*") if p.is_file() and p.suffix != ".dcm"] == []


def test_hostile_uids_do_not_escape_a_destination_folder(tmp_path: Path, series: list[Dataset]) -> None:
    """A result carries the source's Study Instance UID: a hostile one stays a name in the folder."""
    hostile = series[0].copy()
    hostile.StudyInstanceUID = "../../../escape"
    hostile.SeriesInstanceUID = "/tmp/absolute"
    folder = FolderDestination(name="../../named-like-a-path", path=tmp_path / "results")
    node = Node(tmp_path / "state", folder)
    node.submit(1, [hostile])
    assert node.sender.run_once(now=T0) == 1
    [written] = [p for p in tmp_path.rglob("*.dcm") if not p.is_relative_to(tmp_path / "state")]
    assert written.resolve().is_relative_to(folder.path.resolve()) and ".." not in written.parts


def test_unwritable_folder_is_unavailable(tmp_path: Path, series: list[Dataset]) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    node = Node(tmp_path / "state", FolderDestination(name="folder", path=blocker))
    node.submit(1, series)

    assert node.sender.run_once(now=T0) == 0
    assert {(r["state"], r["attempts"], r["refusals"]) for r in node.rows()} == {("pending", 1, 0)}
    assert "cannot write to folder" in node.rows()[0]["last_error"]


def test_crash_in_one_destination_does_not_stop_the_others(
    tmp_path: Path, series: list[Dataset], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the transport")

    monkeypatch.setattr("dicomnode.send.sender.send_files", broken)
    folder = FolderDestination(name="folder", path=tmp_path / "results")
    node = Node(tmp_path / "state", dicom_destination(free_port()), folder)
    node.submit(1, series)

    with caplog.at_level(logging.ERROR, logger="dicomnode.send"):
        assert node.sender.run_once(now=T0) == len(series)
    assert "unexpected error while sending to pacs" in caplog.text
    states = {(r["destination"], r["state"], r["attempts"]) for r in node.rows()}
    assert states == {("pacs", "pending", 1), ("folder", "sent", 0)}


# --- the outbox itself ---------------------------------------------------------------------


def test_outbox_survives_a_restart(tmp_path: Path, series: list[Dataset]) -> None:
    folder = FolderDestination(name="folder", path=tmp_path / "results")
    first = Node(tmp_path / "state", folder)
    first.submit(1, series)
    first.database.close()

    second = Node(tmp_path / "state", folder)
    assert second.outbox.counts() == {"pending": len(series), "sent": 0, "failed": 0}
    assert second.sender.run_once(now=T0) == len(series)
    assert len(list(folder.path.rglob("*.dcm"))) == len(series)


def test_enqueue_in_a_rolled_back_transaction_leaves_nothing(tmp_path: Path, series: list[Dataset]) -> None:
    node = Node(tmp_path / "state", FolderDestination(name="folder", path=tmp_path / "results"))
    files = node.outbox.store(1, as_results(series))
    with pytest.raises(RuntimeError, match="job failed"):
        with node.database.transaction() as connection:
            assert node.outbox.enqueue(connection, 1, files, now=T0) == len(series)
            raise RuntimeError("job failed before commit")
    assert node.rows() == []
    assert node.outbox.due(now=T0 + 1) == {}


def test_enqueue_needs_an_open_transaction(tmp_path: Path, series: list[Dataset]) -> None:
    node = Node(tmp_path / "state", FolderDestination(name="folder", path=tmp_path / "results"))
    files = node.outbox.store(1, as_results(series))
    with pytest.raises(ValueError, match="transaction"):
        node.outbox.enqueue(node.database._connection, 1, files)


def test_rerun_of_a_job_replaces_files_and_does_not_duplicate_rows(tmp_path: Path, series: list[Dataset]) -> None:
    destinations = (FolderDestination(name="a", path=tmp_path / "a"), FolderDestination(name="b", path=tmp_path / "b"))
    node = Node(tmp_path / "state", *destinations)
    first = node.submit(5, series)
    second = node.submit(5, series)
    assert first == second
    assert node.outbox.counts()["pending"] == 2 * len(series)
    assert sorted(p.name for p in (node.layout.outbox / "5").iterdir()) == sorted(p.name for p in first)
    assert list(node.layout.temp.iterdir()) == []


def test_store_validates_its_input(tmp_path: Path, series: list[Dataset]) -> None:
    node = Node(tmp_path / "state")
    with pytest.raises(ValueError, match="appears twice"):
        node.outbox.store(1, as_results([series[0], series[0]]))
    no_meta = Dataset()
    no_meta.SOPInstanceUID = "1.2.3"
    with pytest.raises(ValueError, match="Transfer Syntax"):
        node.outbox.store(1, as_results([no_meta]))
    with pytest.raises(ValueError, match="job_id"):
        node.outbox.store(-1, as_results(series))


def test_unconfigured_destination_stays_pending_with_one_warning(
    tmp_path: Path, series: list[Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    old = Node(tmp_path / "state", FolderDestination(name="retired", path=tmp_path / "retired"))
    old.submit(1, series)
    old.database.close()
    node = Node(tmp_path / "state", FolderDestination(name="current", path=tmp_path / "current"))

    with caplog.at_level(logging.WARNING, logger="dicomnode.send"):
        assert node.sender.run_once(now=T0) == 0
        assert node.sender.run_once(now=T0 + 1) == 0
    assert caplog.text.count("'retired'") == 1
    assert node.outbox.counts() == {"pending": len(series), "sent": 0, "failed": 0}


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = replace(POLICY, retry_initial_seconds=5.0, retry_max_seconds=600.0)
    assert [backoff_seconds(policy, n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert backoff_seconds(policy, 8) == 600.0
    assert backoff_seconds(policy, 10_000) == 600.0


def test_cleanup_leaves_jobs_without_rows(tmp_path: Path, series: list[Dataset]) -> None:
    """A job between store and commit has files but no rows yet: not to be removed."""
    node = Node(tmp_path / "state", FolderDestination(name="folder", path=tmp_path / "results"))
    node.outbox.store(9, as_results(series))
    assert node.outbox.cleanup() == []
    assert (node.layout.outbox / "9").is_dir()


def test_run_forever_delivers_and_stops(tmp_path: Path, series: list[Dataset]) -> None:
    node = Node(tmp_path / "state", FolderDestination(name="folder", path=tmp_path / "results"))
    files = node.outbox.store(1, as_results(series))
    with node.database.transaction() as connection:
        node.outbox.enqueue(connection, 1, files)  # due now, on the real clock
    stop = threading.Event()
    thread = threading.Thread(target=node.sender.run_forever, args=(stop,), kwargs={"poll_seconds": 0.01})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while node.outbox.counts()["sent"] < len(series) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert node.outbox.counts() == {"pending": 0, "sent": len(series), "failed": 0}
