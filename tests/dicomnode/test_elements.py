"""The receiver's own walk over a received file (``dicomnode.net.elements``): what it reads is
what pydicom reads of the whole file, in every transfer syntax the node accepts, and broken
structure is refused with its reason instead of being skipped over."""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from conftest import SHARED_DATA, require_path
from dicomnode.net.attributes import FILED_KEYWORDS, FiledAttributes
from dicomnode.net.elements import MAX_DEPTH, PIXEL_DATA, ElementError, data_set_start, read_elements
from dicomnode.net.part10 import ReceivedFile, file_prefix
from dicomnode.net.receiver import WALKED_TAGS, examine, pixel_data_problem
from dicomnode.spool import HeaderError, read_header
from factories import PhantomSeries
from figures import fuzz_settings
from receivers import file_bytes

#: Slices of each real series compared (their headers differ in positions and UIDs only).
SLICES_PER_SERIES = 5


def encoded(dataset: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``dataset`` as a DICOM file in ``transfer_syntax`` (as the acceptor keeps it)."""
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    return file_bytes(dataset)


def as_pydicom_reads_it(data: bytes) -> tuple[object, str | None]:
    """Header and pixel check from pydicom's parse of the whole file (or why there is no header)."""
    whole = pydicom.dcmread(io.BytesIO(data))
    pixel_data_length = len(whole.PixelData or b"") if "PixelData" in whole else None
    try:
        return read_header(whole), pixel_data_problem(whole, whole.file_meta.get("TransferSyntaxUID", ""), pixel_data_length)
    except HeaderError as error:
        return None, str(error)


def as_the_receiver_reads_it(data: bytes) -> tuple[object, str | None]:
    try:
        examined = examine(ReceivedFile.from_file(data))
    except HeaderError as error:
        return None, str(error)
    return examined.header, examined.pixel_problem


def walk(data: bytes) -> dict[int, object]:
    """The elements the receiver's walk hands over of a whole file."""
    transfer_syntax, start = data_set_start(data)
    return read_elements(memoryview(data)[start:], transfer_syntax, WALKED_TAGS)


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
        walk(data[:-12])  # the last fragment cut short, no delimiter


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
        walk(data)


def test_a_sequence_without_its_delimiter_is_refused() -> None:
    data = encoded(with_nested_sequence(slice_dataset(), 0, undefined_length=True))
    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    cut = data.index(delimiter)
    # An element (items hold their length in 4 bytes, as an implicit VR element does) where the delimiter belongs.
    broken = data[:cut] + b"\x08\x00\x18\x00\x02\x00\x00\x001\x00" + data[cut + len(delimiter) :]
    with pytest.raises(ElementError, match="where a sequence item was due"):
        walk(broken)


@pytest.mark.parametrize("cut", [1, 7, 100, 400, 700])
def test_a_file_cut_short_is_refused(cut: int) -> None:
    """Whatever element the end falls in (Pixel Data, a UID, the file meta), the walk says so
    (pydicom skips a value that runs past the end without a word)."""
    data = encoded(slice_dataset())
    assert len(data) - cut > 200
    with pytest.raises(ElementError, match="runs past the end"):
        walk(data[:-cut])


def test_an_unknown_value_representation_is_refused() -> None:
    data = encoded(slice_dataset())
    at = data.index(b"\x08\x00\x60\x00CS")  # Modality
    with pytest.raises(ElementError, match="Unknown Value Representation"):
        walk(data[:at] + b"\x08\x00\x60\x00QQ" + data[at + 6 :])


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
        walk(broken)


def test_not_a_dicom_file_is_refused() -> None:
    with pytest.raises(ElementError, match="DICM"):
        walk(b"\x00" * 200)


def test_a_deflated_data_set_that_does_not_inflate_is_refused() -> None:
    data = encoded(slice_dataset(), DeflatedExplicitVRLittleEndian)
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # after the group length (0002,0000)'s value
    with pytest.raises(ElementError, match="does not inflate"):
        walk(data[:meta_end] + b"\xff" * 64)


def test_values_are_converted_as_pydicom_converts_them() -> None:
    """Numbers with spaces, several values, an integer string with a decimal point: the header
    comes out as pydicom's values give it."""
    dataset = slice_dataset(SliceThickness=" 2.50", NumberOfFrames="1", ImageType=["original", "PRIMARY", "AXIAL"])
    data = encoded(dataset)
    assert as_the_receiver_reads_it(data) == as_pydicom_reads_it(data)
    attributes = FiledAttributes(walk(data))
    present = {keyword for keyword in FILED_KEYWORDS if attributes.get(keyword) is not None}
    assert {keyword for keyword in FILED_KEYWORDS if keyword in pydicom.dcmread(io.BytesIO(data))} == present


def test_only_what_the_walk_needs_is_looked_at_after_pixel_data() -> None:
    """Elements after Pixel Data are not read: a damaged trailer does not refuse the instance."""
    data = encoded(slice_dataset())
    header, problem = as_the_receiver_reads_it(data + b"\xff\xff\xff\xff" + bytes(itertools.repeat(0xAB, 9)))
    assert header == as_pydicom_reads_it(data)[0] and problem is None


# --- the filed attributes' values, fuzzed: converted as pydicom converts them -------------------

#: Characters the fuzzed text values are drawn from: the forms writers use, and the ones
#: they should not (padding, separators, letters in numbers, bytes outside ASCII).
_TEXT = {
    "UI": "0123456789. \\\x00a",
    "CS": "ORIGINALPRMYXDCT_ \\\x00ao\xe9",
    "DS": "0123456789.-+eE \\naif_\x00",
    "IS": "0123456789.-+ e\\\x00",
}
_KEYWORDS = {keyword: pydicom.datadict.dictionary_VR(keyword) for keyword in FILED_KEYWORDS}
#: VRs an element may be sent with instead of its dictionary's (explicit VR only).
_OTHER_VRS = ("UN", "LO", "IS", "DS", "US", "SS", "OB", "CS", "UI")


#: A CT slice's filed attributes as a scanner writes them (before the fuzz changes some).
_VALID = {
    "SOPClassUID": b"1.2.840.10008.5.1.4.1.1.2\x00",
    "SOPInstanceUID": b"1.2.3.4.5.6\x00",
    "StudyInstanceUID": b"1.2.3.4\x00",
    "SeriesInstanceUID": b"1.2.3.4.5 ",
    "Modality": b"CT",
    "ImageType": b"ORIGINAL\\PRIMARY\\AXIAL ",
    "ImageOrientationPatient": b"1\\0\\0\\0\\1\\0 ",
    "ImagePositionPatient": b"-125.0\\-125.0\\-30.5 ",
    "PixelSpacing": b"0.5\\0.5 ",
    "SliceThickness": b" 2.50 ",
    "Rows": b"\x02\x00",
    "Columns": b"\x02\x00",
    "SamplesPerPixel": b"\x01\x00",
    "NumberOfFrames": b"1 ",
    "BitsAllocated": b"\x10\x00",
}


def _raw_value(vr: str) -> st.SearchStrategy[bytes]:
    if vr == "US":
        return st.binary(min_size=0, max_size=6)
    text = st.text(alphabet=_TEXT[vr], max_size=40).map(lambda s: s.encode("latin-1"))
    typical = {
        "UI": [b"1.2.840.10008.5.1.4.1.1.2\x00", b" 1.2.3", b"", b"1.2\\3.4"],
        "CS": [b"CT", b"ORIGINAL\\PRIMARY\\AXIAL ", b"MR\\CT", b" ", b"derived"],
        "DS": [b"0.5\\0.5 ", b"1\\0\\0\\0\\1\\0 ", b"-125.0\\-125.0\\-30.5", b" 2.50", b"nan", b"1e999", b"1.\\.5", b"1\\\\2"],
        "IS": [b"1 ", b"2", b"1.0", b"0", b"+3", b"1.5", b"99999999999999999999"],
    }[vr]
    return st.one_of(st.sampled_from(typical), text)


@st.composite
def fuzzed_elements(draw: st.DrawFn) -> tuple[str, list[tuple[int, str, bytes]]]:
    """A transfer syntax and (tag, VR, value) elements: a valid slice's filed attributes with
    one to three of them changed (left out, their value or, explicit VR only, their VR
    drawn), a character set or none, Pixel Data of 8 bytes last."""
    transfer_syntax = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]))
    big_endian = transfer_syntax == ExplicitVRBigEndian
    values = {keyword: (vr, _VALID[keyword]) for keyword, vr in _KEYWORDS.items()}
    for keyword in draw(st.lists(st.sampled_from(sorted(_KEYWORDS)), min_size=1, max_size=3, unique=True)):
        vr = _KEYWORDS[keyword]
        how = draw(st.sampled_from(("value", "value", "value", "vr", "absent")))
        if how == "absent":
            del values[keyword]
        elif how == "vr" and transfer_syntax != ImplicitVRLittleEndian:
            values[keyword] = (draw(st.sampled_from(_OTHER_VRS)), draw(st.one_of(st.just(_VALID[keyword]), _raw_value(vr))))
        else:
            values[keyword] = (vr, draw(_raw_value(vr)))
    elements = []
    for keyword, (vr, value) in values.items():
        if big_endian and vr in ("US", "SS") and value == _VALID[keyword]:
            value = value[::-1]  # the valid numbers in big endian
        elements.append((pydicom.datadict.tag_for_keyword(keyword), vr, value))
    if draw(st.booleans()):
        charset = draw(st.sampled_from([b"ISO_IR 100", b"ISO_IR 192", b"\\ISO 2022 IR 87", b"NOT A CHARSET"]))
        elements.append((0x00080005, "CS", charset))
    elements.append((PIXEL_DATA, "OW", bytes(8)))
    return transfer_syntax, sorted(elements)


def encoded_by_hand(transfer_syntax: str, elements: list[tuple[int, str, bytes]]) -> bytes:
    """A DICOM file holding exactly ``elements`` as given (pydicom would correct what is fuzzed)."""
    little = transfer_syntax != ExplicitVRBigEndian
    order = "<" if little else ">"
    data = b""
    for tag, vr, value in elements:
        group_element = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
        if transfer_syntax == ImplicitVRLittleEndian:
            data += group_element + struct.pack("<L", len(value)) + value
        elif vr in ("OB", "OW", "UN"):
            data += group_element + vr.encode() + b"\0\0" + struct.pack(order + "L", len(value)) + value
        else:
            data += group_element + vr.encode() + struct.pack(order + "H", len(value)) + value
    return file_prefix(CTImageStorage, "1.2.3.4", transfer_syntax, "FUZZ") + data


def outcome(read: Callable[[bytes], tuple[object, str | None]], data: bytes) -> str:
    """What ``read`` makes of ``data``: its header and pixel check, or the kind of error it
    raised (as text: a header holding a NaN equals another only so)."""
    try:
        return repr(read(data))
    except Exception as error:  # the same pydicom error either way, or the test fails
        return type(error).__name__


@fuzz_settings(examples=400)
@given(case=fuzzed_elements())
def test_fuzzed_values_read_as_pydicom_reads_them(case: tuple[str, list[tuple[int, str, bytes]]]) -> None:
    """Whatever the values and VRs of the filed attributes, the receiver's header, pixel check,
    refusal reason or error is the one pydicom's reading of the whole file gives."""
    data = encoded_by_hand(*case)
    assert outcome(as_the_receiver_reads_it, data) == outcome(as_pydicom_reads_it, data)
