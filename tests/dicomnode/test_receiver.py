"""The receiver over a real network: dcmtk storescu and a pynetdicom SCU against the node's AE.

Each bad input gets its status, leaves nothing behind, and the node serves the next association.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom import AE, _config

from conftest import SHARED_DATA, require_path
from dicomnode.net.part10 import ReceivedFile
from dicomnode.net.receiver import examine, pixel_data_problem
from dicomnode.settings import CT_IMAGE_STORAGE, StorageSettings
from dicomnode.spool import read_header
from dicomnode.status import Status
from factories import PhantomSeries
from peers import storescu, wait_until
from receivers import RunningReceiver, file_bytes
from receivers import start_in_process as _start


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningReceiver]:
    running, server = _start(tmp_path)
    yield running
    server.shutdown()


def send_with_pynetdicom(node: RunningReceiver, path_or_dataset, calling: str = "PYSCU") -> int:  # type: ignore[no-untyped-def]
    """Send one object the way a raw peer would (a file path is sent as its bytes, not re-encoded)."""
    _config.STORE_SEND_CHUNKED_DATASET = isinstance(path_or_dataset, Path)
    ae = AE(ae_title=calling)
    ds = pydicom.dcmread(path_or_dataset, stop_before_pixels=True) if isinstance(path_or_dataset, Path) else path_or_dataset
    sop_class = ds.file_meta.MediaStorageSOPClassUID
    ae.add_requested_context(sop_class, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.settings.port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path_or_dataset)
        return int(status.Status)
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = False


def test_a_series_is_stored_and_indexed(node: RunningReceiver, phantom_dir: Path) -> None:
    storescu(phantom_dir, node.settings.ae_title, node.settings.port)
    assert node.indexed() == 40
    files = node.spool_files()
    assert len(files) == 40
    series = PhantomSeries()
    first = pydicom.dcmread(node.spool.absolute(files[0]))
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert {f.parts[1] for f in files} == {first.SeriesInstanceUID}
    assert first.Rows == series.rows
    assert node.temporaries() == []


def test_the_same_instance_twice_is_stored_once(node: RunningReceiver, phantom_dir: Path) -> None:
    one = sorted(phantom_dir.iterdir())[0]
    storescu([one, one], node.settings.ae_title, node.settings.port)
    storescu([one], node.settings.ae_title, node.settings.port)
    assert node.indexed() == 1
    assert len(node.spool_files()) == 1


def test_non_dicom_bytes_are_refused(node: RunningReceiver, phantom_dir: Path, tmp_path: Path) -> None:
    """A dataset whose encoding is garbage: 0xC210, nothing stored, the node serves on."""
    good = sorted(phantom_dir.iterdir())[0]
    ds = pydicom.dcmread(good)
    garbage = tmp_path / "garbage.dcm"
    with open(garbage, "wb") as handle:
        handle.write(b"\0" * 128 + b"DICM")
        pydicom.filewriter.write_file_meta_info(handle, ds.file_meta)
        handle.write(b"\x08\x00\x16\x00UI\xff\xff" + b"this is not a DICOM data set" * 10)
    assert send_with_pynetdicom(node, garbage) == Status.CANNOT_UNDERSTAND
    assert node.indexed() == 0 and node.spool_files() == []
    assert send_with_pynetdicom(node, good) == Status.SUCCESS


def test_missing_uids_are_refused(node: RunningReceiver, phantom_dir: Path, tmp_path: Path) -> None:
    good = sorted(phantom_dir.iterdir())[0]
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        ds = pydicom.dcmread(good)
        delattr(ds, keyword)
        path = tmp_path / f"no-{keyword}.dcm"
        ds.save_as(path)
        assert send_with_pynetdicom(node, path) == Status.CANNOT_UNDERSTAND, keyword
    assert node.indexed() == 0
    assert send_with_pynetdicom(node, good) == Status.SUCCESS


def test_truncated_pixel_data_is_refused(node: RunningReceiver, phantom_dir: Path, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    ds = pydicom.dcmread(sorted(phantom_dir.iterdir())[0])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    path = tmp_path / "truncated.dcm"
    ds.save_as(path)
    with caplog.at_level(logging.WARNING):
        result = storescu([path], node.settings.ae_title, node.settings.port, check=False)
    assert "Received Store Response (Error: CannotUnderstand)" in result.stderr
    assert "Pixel Data is truncated" in caplog.text
    assert node.indexed() == 0 and node.spool_files() == []


def test_other_sop_classes_are_acknowledged_and_dropped(node: RunningReceiver, phantom_dir: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    ds = pydicom.dcmread(sorted(phantom_dir.iterdir())[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    with caplog.at_level(logging.INFO):
        assert send_with_pynetdicom(node, ds) == Status.SUCCESS
    assert "acknowledged and dropped Secondary Capture Image Storage" in caplog.text
    assert node.indexed() == 0 and node.spool_files() == []


def test_hostile_uids_do_not_escape_the_spool(node: RunningReceiver, phantom_dir: Path) -> None:
    ds = pydicom.dcmread(sorted(phantom_dir.iterdir())[0])
    ds.StudyInstanceUID = "../../../../tmp/escape"
    ds.SeriesInstanceUID = "/etc/passwd"
    assert send_with_pynetdicom(node, ds) == Status.SUCCESS
    (stored,) = node.spool_files()
    assert ".." not in stored.parts and "etc" not in stored.parts
    assert node.spool.absolute(stored).resolve().is_relative_to(node.layout.spool.resolve())


def test_below_the_free_space_floor_answers_out_of_resources(tmp_path: Path, phantom_dir: Path) -> None:
    running, server = _start(tmp_path, min_free_mb=2**40)  # a floor no disk reaches
    try:
        result = storescu([sorted(phantom_dir.iterdir())[0]], running.settings.ae_title, running.settings.port, check=False)
        assert "Received Store Response (Refused: OutOfResources)" in result.stderr
        assert running.indexed() == 0 and running.spool_files() == [] and running.temporaries() == []
    finally:
        server.shutdown()


def test_unknown_calling_ae_is_rejected_and_the_node_serves_on(tmp_path: Path, phantom_dir: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    running, server = _start(tmp_path, allowed_calling_ae_titles=("SCANNER1",))
    try:
        with caplog.at_level(logging.WARNING):
            refused = storescu(phantom_dir, running.settings.ae_title, running.settings.port, calling="INTRUDER", check=False)
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stderr or "calling AE title not recognized" in refused.stderr.lower()
        # The node logs after it has sent the rejection: storescu may have exited before that line.
        wait_until(lambda: "association from INTRUDER" in caplog.text and "rejected" in caplog.text, 10, what="the rejection logged")
        assert running.indexed() == 0
        storescu(phantom_dir, running.settings.ae_title, running.settings.port, calling="SCANNER1")
        assert running.indexed() == 40
    finally:
        server.shutdown()


def test_ct_image_storage_is_kept() -> None:
    assert CT_IMAGE_STORAGE in StorageSettings().keep_sop_classes


def _compressed_phantoms(directory: Path) -> list[Path]:
    """Two phantom slices re-encoded as RLE Lossless and as Deflated Explicit VR Little Endian."""
    series = PhantomSeries(slices=2)
    rle, deflated = series.datasets()
    rle.compress(pydicom.uid.RLELossless)
    deflated.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    paths = [directory / "rle.dcm", directory / "deflated.dcm"]
    for ds, path in zip((rle, deflated), paths):
        ds.save_as(path, enforce_file_format=True)
    return paths


def test_every_compressed_transfer_syntax_is_accepted_and_kept_as_sent(node: RunningReceiver, tmp_path: Path) -> None:
    """JPEG lossless (RICORD), JPEG-LS (PET/CT), JPEG 2000 (TotalSegmentator), RLE, deflated.

    The TotalSegmentator files carry their UIDs only in the file meta, not in the data set: as
    sent they are refused (0xC210, missing UIDs). With the UIDs put back (pixel data still JPEG
    2000 as published) they go through a pynetdicom SCU, since dcmtk's storescu cannot read them.
    """
    data = require_path(SHARED_DATA / "ct")
    jpeg2000 = []
    for original in sorted((data / "totalseg-example" / "dicom").iterdir())[:3]:
        assert send_with_pynetdicom(node, original) == Status.CANNOT_UNDERSTAND
        ds = pydicom.dcmread(original)
        ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
        jpeg2000.append(tmp_path / original.name)
        ds.save_as(jpeg2000[-1], enforce_file_format=True)
    samples = [
        sorted((data / "ricord1a-000082-covid").iterdir())[:3],
        sorted((data / "petct-wholebody").iterdir())[:3],
        *[[path] for path in _compressed_phantoms(tmp_path)],
    ]
    for files in samples:
        storescu(files, node.settings.ae_title, node.settings.port)
    for path in jpeg2000:
        assert send_with_pynetdicom(node, path) == Status.SUCCESS
    samples.append(jpeg2000)
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for files in samples for p in files}
    stored = {pydicom.dcmread(node.spool.absolute(f)).SOPInstanceUID: node.spool.absolute(f) for f in node.spool_files()}
    assert set(stored) == set(sent)
    for uid, path in stored.items():
        original = pydicom.dcmread(sent[uid])
        kept = pydicom.dcmread(path)
        assert kept.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert (kept.pixel_array == original.pixel_array).all()


def test_a_wrong_called_ae_title_is_rejected(node: RunningReceiver, phantom_dir: Path) -> None:
    refused = storescu(phantom_dir, "NOTTHENODE", node.settings.port, check=False)
    assert "Called AE Title Not Recognized" in refused.stderr
    assert node.indexed() == 0


def test_associations_beyond_the_limit_are_rejected(tmp_path: Path, phantom_dir: Path) -> None:
    running, server = _start(tmp_path, max_associations=1)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context("1.2.840.10008.1.1")
    held = holder.associate("127.0.0.1", running.settings.port, ae_title=running.settings.ae_title)
    try:
        assert held.is_established
        refused = storescu(phantom_dir, running.settings.ae_title, running.settings.port, check=False)
        assert "Local Limit Exceeded" in refused.stderr
    finally:
        held.release()
    try:
        storescu(phantom_dir, running.settings.ae_title, running.settings.port)  # served again
        assert running.indexed() == 40
    finally:
        server.shutdown()


def test_the_attributes_parsed_on_arrival_are_all_the_receiver_reads() -> None:
    """The handler reads only ``FILED_KEYWORDS``: the header and the pixel check it files by
    must come out as they do from the whole data set (a keyword read but not listed would be None)."""
    whole, truncated = PhantomSeries(slices=2).datasets()
    truncated.PixelData = truncated.PixelData[:1000]
    truncated.SamplesPerPixel, truncated.NumberOfFrames = 1, 1
    problems = []
    for dataset in (whole, truncated):
        data = file_bytes(dataset)
        full, examined = pydicom.dcmread(io.BytesIO(data)), examine(ReceivedFile.from_file(data))
        assert examined.header == read_header(full)
        assert examined.pixel_problem == pixel_data_problem(full, full.file_meta.TransferSyntaxUID, len(full.PixelData))
        problems.append(examined.pixel_problem)
    assert problems[0] is None and problems[1] is not None  # the truncated one is caught
