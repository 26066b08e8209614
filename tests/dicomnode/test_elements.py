"""The receiver's own walk over a received file (``dicomnode.net.elements``): what it reads is
what pydicom reads of the whole file, in every transfer syntax the node accepts, and broken
structure is refused with its reason instead of being skipped over."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from conftest import SHARED_DATA, require_path
from dicomnode.net.elements import MAX_DEPTH, ElementError, read_elements
from dicomnode.net.receiver import FILED_TAGS, examine, parse_filed_attributes, pixel_data_problem
from dicomnode.spool import HeaderError, read_header
from factories import PhantomSeries

#: Slices of each real series compared (their headers differ in positions and UIDs only).
SLICES_PER_SERIES = 5


def encoded(dataset: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``dataset`` as a DICOM file in ``transfer_syntax`` (as the acceptor keeps it)."""
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def as_pydicom_reads_it(data: bytes) -> tuple[object, str | None]:
    """Header and pixel check from pydicom's parse of the whole file (or why there is no header)."""
    whole = pydicom.dcmread(io.BytesIO(data))
    try:
        return read_header(whole), pixel_data_problem(whole)
    except HeaderError as error:
        return None, str(error)


def as_the_receiver_reads_it(data: bytes) -> tuple[object, str | None]:
    try:
        examined = examine(data)
    except HeaderError as error:
        return None, str(error)
    return examined.header, examined.pixel_problem


def slice_dataset(**changes: object) -> Dataset:
    dataset = PhantomSeries(slices=1, rows=16, columns=16).datasets()[0]
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    return dataset


def real_files() -> list[Path]:
    files = []
    for series in sorted(require_path(SHARED_DATA / "ct").iterdir()):
        files += [p for p in sorted(series.rglob("*")) if p.is_file() and p.read_bytes()[128:132] == b"DICM"][:SLICES_PER_SERIES]
    return files


def test_real_series_read_as_pydicom_reads_them() -> None:
    """Every real series (explicit VR little endian, JPEG lossless, JPEG-LS, JPEG 2000; vendor
    private tags and sequences included) gives the same header and pixel check, or the same
    reason for having none (the TotalSegmentator example's SOP Class UID is empty)."""
    files = real_files()
    assert len({f.parent for f in files}) == 5
    outcomes = []
    for path in files:
        data = path.read_bytes()
        outcomes.append(as_the_receiver_reads_it(data))
        assert outcomes[-1] == as_pydicom_reads_it(data), path
    assert sum(header is None for header, _ in outcomes) == SLICES_PER_SERIES  # the TotalSegmentator slices


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
)
def test_each_uncompressed_transfer_syntax_reads_as_pydicom_reads_it(transfer_syntax: str) -> None:
    data = encoded(slice_dataset(), transfer_syntax)
    header, problem = as_the_receiver_reads_it(data)
    assert (header, problem) == as_pydicom_reads_it(data)
    assert header.rows == 16 and header.pixel_spacing is not None and problem is None


def test_encapsulated_pixel_data_is_walked_to_its_delimiter() -> None:
    dataset = slice_dataset()
    dataset.PixelData = encapsulate([b"\x01\x02" * 50, b"\x03\x04" * 20])
    data = encoded(dataset, RLELossless)
    assert as_the_receiver_reads_it(data) == as_pydicom_reads_it(data)
    with pytest.raises(ElementError, match="runs past the end"):
        read_elements(data[:-12], FILED_TAGS)  # the last fragment cut short, no delimiter


def with_nested_sequence(dataset: Dataset, depth: int, undefined_length: bool) -> Dataset:
    """``dataset`` with a Referenced Image Sequence (0008,1140: before the UIDs the receiver
    files by) ``depth`` levels deep, each sequence and item of undefined length or not."""
    item = Dataset()
    item.CodeValue = "X"
    for level in range(depth + 1):
        item.is_undefined_length_sequence_item = undefined_length
        holder = dataset if level == depth else Dataset()
        holder.ReferencedImageSequence = Sequence([item])
        holder["ReferencedImageSequence"].is_undefined_length = undefined_length
        item = holder
    return dataset


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("undefined_length", [True, False], ids=["undefined-length", "defined-length"])
def test_nested_sequences_are_walked_past(transfer_syntax: str, undefined_length: bool) -> None:
    data = encoded(with_nested_sequence(slice_dataset(), 5, undefined_length), transfer_syntax)
    assert (b"\xfe\xff\xdd\xe0" in data) == undefined_length  # sequence delimiters written, or none
    assert as_the_receiver_reads_it(data) == as_pydicom_reads_it(data)


def test_sequences_nested_too_deep_are_refused() -> None:
    data = encoded(with_nested_sequence(slice_dataset(), MAX_DEPTH + 1, undefined_length=True))
    with pytest.raises(ElementError, match="nested deeper"):
        read_elements(data, FILED_TAGS)


def test_a_sequence_without_its_delimiter_is_refused() -> None:
    data = encoded(with_nested_sequence(slice_dataset(), 0, undefined_length=True))
    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    cut = data.index(delimiter)
    # An element (items hold their length in 4 bytes, as an implicit VR element does) where the delimiter belongs.
    broken = data[:cut] + b"\x08\x00\x18\x00\x02\x00\x00\x001\x00" + data[cut + len(delimiter) :]
    with pytest.raises(ElementError, match="where a sequence item was due"):
        read_elements(broken, FILED_TAGS)


@pytest.mark.parametrize("cut", [1, 7, 100, 400, 700])
def test_a_file_cut_short_is_refused(cut: int) -> None:
    """Whatever element the end falls in (Pixel Data, a UID, the file meta), the walk says so
    (pydicom skips a value that runs past the end without a word)."""
    data = encoded(slice_dataset())
    assert len(data) - cut > 200
    with pytest.raises(ElementError, match="runs past the end"):
        read_elements(data[:-cut], FILED_TAGS)


def test_an_unknown_value_representation_is_refused() -> None:
    data = encoded(slice_dataset())
    at = data.index(b"\x08\x00\x60\x00CS")  # Modality
    with pytest.raises(ElementError, match="Unknown Value Representation"):
        read_elements(data[:at] + b"\x08\x00\x60\x00QQ" + data[at + 6 :], FILED_TAGS)


def test_bytes_that_are_no_vr_are_read_as_implicit_vr_like_pydicom_does() -> None:
    """A writer that switches to implicit VR mid-file: pydicom reads it, so does the walk."""
    data = encoded(slice_dataset(Modality="CT"))
    at = data.index(b"\x08\x00\x60\x00CS\x02\x00CT")
    switched = data[:at] + b"\x08\x00\x60\x00\x02\x00\x00\x00CT" + data[at + 10 :]
    assert as_the_receiver_reads_it(switched) == as_pydicom_reads_it(switched)


def test_a_filed_attribute_of_undefined_length_is_refused() -> None:
    data = encoded(slice_dataset())
    at = data.index(b"\x08\x00\x60\x00CS\x02\x00CT")  # Modality as an undefined-length UN holding one empty item
    broken = data[:at] + b"\x08\x00\x60\x00UN\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" + data[at + 10 :]
    with pytest.raises(ElementError, match="undefined length"):
        read_elements(broken, FILED_TAGS)


def test_not_a_dicom_file_is_refused() -> None:
    with pytest.raises(ElementError, match="DICM"):
        read_elements(b"\x00" * 200, FILED_TAGS)


def test_a_deflated_data_set_that_does_not_inflate_is_refused() -> None:
    data = encoded(slice_dataset(), DeflatedExplicitVRLittleEndian)
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # after the group length (0002,0000)'s value
    with pytest.raises(ElementError, match="does not inflate"):
        read_elements(data[:meta_end] + b"\xff" * 64, FILED_TAGS)


def test_values_are_converted_as_pydicom_converts_them() -> None:
    """Numbers with spaces, several values, an integer string with a decimal point: the header
    comes out as pydicom's values give it."""
    dataset = slice_dataset(SliceThickness=" 2.50", NumberOfFrames="1", ImageType=["original", "PRIMARY", "AXIAL"])
    data = encoded(dataset)
    assert as_the_receiver_reads_it(data) == as_pydicom_reads_it(data)
    parsed = parse_filed_attributes(data)
    assert set(parsed.keys()) <= FILED_TAGS | {0x00080005}
    assert {tag for tag in FILED_TAGS if tag in pydicom.dcmread(io.BytesIO(data))} == set(parsed.keys()) - {0x00080005}


def test_only_what_the_walk_needs_is_looked_at_after_pixel_data() -> None:
    """Elements after Pixel Data are not read: a damaged trailer does not refuse the instance."""
    data = encoded(slice_dataset())
    header, problem = as_the_receiver_reads_it(data + b"\xff\xff\xff\xff" + bytes(itertools.repeat(0xAB, 9)))
    assert header == as_pydicom_reads_it(data)[0] and problem is None
