"""Bad input (issue 6): fuzzing what the node reads from the network and from its spool.

Hypothesis draws the cases, derandomized (the same cases on every run) and without its example
database (nothing is written to ``.hypothesis``). Each part records how many cases it tried and
how they ended:

- malformed datasets over real associations to the in-process receiver (``handle_store``): every
  case gets a DIMSE status of the defined set; what was acknowledged is in the index and the
  spool (or was logged as dropped), what was refused is in neither and has a logged reason;
- malformed PDUs on raw TCP sockets: the server answers with well-formed PDUs or closes, serves
  the next association, and no association thread outlives its connection;
- malformed series headers to the assembly rules: a reason or None, never an exception;
- malformed series files to the volume builder: a volume with a finite geometry or a
  :class:`VolumeError` with a message; any other exception is a bug.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import math
import re
import socket
import struct
import threading
import traceback
from collections.abc import Iterator
from logging import DEBUG, WARNING
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, _config

from dicomnode.assembly.rules import first_failure
from dicomnode.net.server import AssociationServer
from dicomnode.settings import AssemblySettings
from dicomnode.spool import InstanceHeader, read_header
from dicomnode.status import Status
from dicomnode.volume import VolumeError, build_volume
from factories import TEST_UID_ROOT, PhantomSeries
from figures import fuzz_settings, record_figures
from peers import echo_ok, wait_until
from raw_pdus import associate_rq, pdu
from receivers import RunningReceiver, start_in_process

# Malformed values are the point: pydicom warns about each one, numpy about NaN and overflow.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom", "ignore::RuntimeWarning")


def reason_kind(message: str) -> str:
    """The gist of a refusal or a VolumeError (file names, values and numbers removed), for counting."""
    words = re.sub(r"\S*\.dcm:?|b?'[^']*'|b?\"[^\"]*\"|\[[^\]]*\]|\(.*", " ", message).split()
    return " ".join([word for word in words if re.fullmatch(r"[A-Za-z,:-]+", word)][:4])


# --- DICOM files, byte by byte ------------------------------------------------------------

#: Explicit VR little endian VRs with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED_LENGTH)
ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
PIXEL_DATA = 0x7FE00010
ROWS = 0x00280010
NESTED_SEQUENCE = 0x00081140  # Referenced Image Sequence


def element(tag: int, vr: str, value: bytes, undefined_length: bool = False) -> bytes:
    """One explicit VR little endian element holding ``value`` as it is (any VR, odd lengths, garbage)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("latin-1")
    length = UNDEFINED_LENGTH if undefined_length else len(value)
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<L", length) + value
    return head + struct.pack("<H", min(length, 0xFFFF)) + value


def encode_file(ds: Dataset, replaced: dict[int, bytes | None], transfer_syntax: str) -> bytes:
    """``ds`` as a DICOM file whose meta claims ``transfer_syntax`` while the data set is explicit VR LE.

    ``replaced`` maps a tag to the whole encoded element that takes its place (None: left out),
    so that any value, however wrong for its VR, reaches the reader as it was written.
    """
    ds = copy.deepcopy(ds)
    correct_ambiguous_vr(ds, True)
    encoded: dict[int, bytes | None] = {}
    for data_element in ds:
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_data_element(buffer, data_element)
        encoded[int(data_element.tag)] = buffer.getvalue()
    encoded.update(replaced)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    file_meta = copy.deepcopy(ds.file_meta)
    file_meta.TransferSyntaxUID = transfer_syntax
    write_file_meta_info(meta, file_meta, enforce_standard=True)
    body = b"".join(value for _, value in sorted(encoded.items()) if value is not None)
    return b"\0" * 128 + b"DICM" + meta.getvalue() + body


def nested_sequence(depth: int) -> bytes:
    """A sequence ``depth`` levels deep, each item holding the next (undefined lengths)."""
    nested = b""
    for _ in range(depth):
        nested = element(NESTED_SEQUENCE, "SQ", ITEM + nested + ITEM_END + SEQUENCE_END, undefined_length=True)
    return nested


def encapsulated(fragment: bytes) -> bytes:
    """Pixel Data as one encapsulated frame holding ``fragment`` (garbage for any codec)."""
    return element(PIXEL_DATA, "OB", encapsulate([fragment]) + SEQUENCE_END, undefined_length=True)


# --- what a malformed instance is ----------------------------------------------------------

#: The attributes the receiver, the rules and the volume builder read.
KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "ImageType",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "NumberOfFrames", "PixelSpacing", "ImageOrientationPatient",
    "ImagePositionPatient", "SliceThickness", "RescaleSlope", "RescaleIntercept", "PixelPaddingValue",
    "PixelPaddingRangeLimit", "InstanceNumber", "FrameOfReferenceUID", "PixelData",
)
VRS = ("UI", "CS", "US", "SS", "UL", "DS", "IS", "FD", "OB", "OW", "UN", "LO", "SQ", "ZZ", "\0\0")
INTERESTING = (
    b"", b"\0", b" ", b"\xff\xfe", b"nan\\nan", b"inf\\-inf\\0 ", b"1e309", b"-0", b"abc ", b"1\\0\\0\\1\\0\\0",
    b"0\\0\\0\\0\\0\\0", b"\\\\\\ ", b"\x10\x00", b"\xff\xff", b"\0\0\0\0", b"65535 ", b"-1", b"1.2.3" * 30,
)
CLAIMS = (
    ExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless,
)

values = st.one_of(
    st.sampled_from(INTERESTING),
    st.binary(max_size=48),
    st.integers(0, 0xFFFF).map(lambda n: struct.pack("<H", n)),
    st.text("0123456789.-+eE\\ naif", max_size=24).map(str.encode),
)


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One element of an instance changed: ``encoded`` takes the place of ``tag`` (None: removed)."""

    kind: str
    tag: int
    encoded: bytes | None


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    kind = draw(st.sampled_from(("drop", "value", "value", "pixels", "deep sequence", "random element")))
    if kind == "drop":
        return Mutation(kind, tag_for_keyword(draw(st.sampled_from(KEYWORDS))), None)
    if kind == "value":
        tag = tag_for_keyword(draw(st.sampled_from(KEYWORDS)))
        return Mutation(kind, tag, element(tag, draw(st.sampled_from(VRS)), draw(values)))
    if kind == "pixels":
        how = draw(st.sampled_from(("truncated", "oversized", "encapsulated garbage")))
        if how == "encapsulated garbage":
            return Mutation(f"pixels {how}", PIXEL_DATA, encapsulated(draw(st.binary(min_size=2, max_size=300))))
        length = draw(st.integers(0, 511) if how == "truncated" else st.integers(513, 2048))  # a slice has 512 bytes
        return Mutation(f"pixels {how}", PIXEL_DATA, element(PIXEL_DATA, "OW", b"\x01" * length))
    if kind == "deep sequence":
        return Mutation(kind, NESTED_SEQUENCE, nested_sequence(draw(st.integers(1, 600))))
    tag = draw(st.integers(0, 0xFFFFFFFF))
    return Mutation(kind, tag, element(tag, draw(st.sampled_from(VRS)), draw(values)))


#: Byte edits of the encoded data set: (kind, where in permille of its length, bytes).
byte_edits = st.tuples(
    st.sampled_from(("flip", "insert", "delete", "truncate")), st.integers(0, 999), st.binary(min_size=1, max_size=16)
)


@dataclasses.dataclass(frozen=True)
class MalformedInstance:
    """A phantom slice with changed elements, a transfer syntax claim and raw byte edits."""

    mutations: tuple[Mutation, ...]
    transfer_syntax: str
    edits: tuple[tuple[str, int, bytes], ...]

    def encode(self, ds: Dataset) -> bytes:
        """The file's bytes; the byte edits apply after the file meta, which the sending SCU must read."""
        whole = encode_file(ds, {m.tag: m.encoded for m in self.mutations}, self.transfer_syntax)
        meta_end = 132 + 12 + struct.unpack("<L", whole[140:144])[0]  # after the group length's value
        head, body = whole[:meta_end], bytearray(whole[meta_end:])
        for kind, permille, data in self.edits:
            at = len(body) * permille // 1000
            if kind == "flip":
                body[at : at + len(data)] = bytes(a ^ b for a, b in zip(body[at : at + len(data)], data))
            elif kind == "insert":
                body[at:at] = data
            elif kind == "delete":
                del body[at : at + len(data)]
            else:
                del body[at:]
        return head + bytes(body)

    def kinds(self) -> list[str]:
        kinds = [m.kind for m in self.mutations] + [f"bytes {kind}" for kind, _, _ in self.edits]
        if self.transfer_syntax != ExplicitVRLittleEndian:
            kinds.append("claims " + pydicom.uid.UID(self.transfer_syntax).name)
        return kinds


malformed_instances = st.builds(
    MalformedInstance,
    mutations=st.lists(mutations(), max_size=3).map(tuple),
    transfer_syntax=st.sampled_from(CLAIMS),
    edits=st.lists(byte_edits, max_size=2).map(tuple),
)


def phantom(slices: int = 6, rows: int = 16, columns: int = 16, series: str = "1") -> PhantomSeries:
    """A small phantom with fixed UIDs (the cases are about headers; fixed UIDs keep byte offsets fixed)."""
    study = TEST_UID_ROOT + "6.1"
    return PhantomSeries(slices=slices, rows=rows, columns=columns, study_uid=study, series_uid=f"{study}.{series}")


# --- 1. malformed datasets to the receiver --------------------------------------------------

def defined_status(status: int) -> bool:
    """0x0000 success, 0xA7xx out of resources, 0xC000-0xCFFF cannot understand, 0x0110 processing failure."""
    if status in (Status.SUCCESS, Status.PROCESSING_FAILURE):
        return True
    return 0xA700 <= status <= 0xA7FF or 0xC000 <= status <= 0xCFFF


class Sender:
    """A pynetdicom SCU that sends files' data sets byte for byte, reusing one association."""

    def __init__(self, running: RunningReceiver) -> None:
        self.running = running
        self.ae = AE(ae_title="FUZZSCU")
        for transfer_syntax in dict.fromkeys(CLAIMS):
            self.ae.add_requested_context(CTImageStorage, transfer_syntax)
        self.ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        self.assoc = None
        self.associations = 0

    def store(self, path: Path) -> int | None:
        """The status the node answered, or None if no answer came."""
        if self.assoc is None or not self.assoc.is_established:
            settings = self.running.settings
            self.assoc = self.ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
            assert self.assoc.is_established
            self.associations += 1
        response = self.assoc.send_c_store(path)
        return int(response.Status) if "Status" in response else None

    def release(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


FuzzedNode = tuple[RunningReceiver, AssociationServer]


@pytest.fixture
def fuzzed_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FuzzedNode]:
    """A receiver with a short network timeout, and the SCU side sending files unparsed."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    running, server = start_in_process(tmp_path, network_timeout_seconds=2.0)
    yield running, server
    server.shutdown()


def test_malformed_datasets_get_a_defined_status(
    fuzzed_node: FuzzedNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running, _ = fuzzed_node
    base = phantom(slices=1).datasets()[0]
    sender = Sender(running)
    case_file = tmp_path / "case.dcm"
    statuses: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    cases = 0

    @fuzz_settings(examples=200)
    @given(instance=malformed_instances)
    def one_case(instance: MalformedInstance) -> None:
        nonlocal cases
        cases += 1
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
            prefix=TEST_UID_ROOT, entropy_srcs=["fuzz", str(cases)]
        )
        case_file.write_bytes(instance.encode(ds))
        rows, files = running.indexed(), len(running.spool_files())
        caplog.clear()
        status = sender.store(case_file)
        assert status is not None and defined_status(status), f"status {status} for {instance.kinds()}"
        # Malformed input is the peer's fault (0xC210), never an unexpected error inside the node.
        assert status != Status.PROCESSING_FAILURE, instance.kinds()
        statuses[f"0x{status:04X}"] += 1
        kinds.update(instance.kinds())
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("dicomnode")]
        if status == Status.SUCCESS and running.indexed() == rows + 1:
            assert len(running.spool_files()) == files + 1
            outcomes["stored"] += 1
        else:
            assert (running.indexed(), len(running.spool_files())) == (rows, files), instance.kinds()
            if status == Status.SUCCESS:  # acknowledged, not stored: only an unkept SOP class or a duplicate
                assert any("acknowledged and dropped" in m or "received again" in m for m in messages), messages
                outcomes["acknowledged, not kept"] += 1
            else:
                refusals = [r for r in caplog.records if r.name.startswith("dicomnode") and r.levelno >= WARNING]
                assert refusals, f"refused {instance.kinds()} without a logged reason"
                outcomes["refused: " + reason_kind(refusals[0].getMessage().split("FUZZSCU: ", 1)[-1])] += 1
        assert running.temporaries() == []

    with caplog.at_level(DEBUG, logger="dicomnode"):
        one_case()
        good = copy.deepcopy(base)
        good.SOPInstanceUID = good.file_meta.MediaStorageSOPInstanceUID = TEST_UID_ROOT + "6.9"
        case_file.write_bytes(encode_file(good, {}, ExplicitVRLittleEndian))
        assert sender.store(case_file) == Status.SUCCESS  # the node stores the next good instance
    sender.release()
    assert echo_ok(running.settings.ae_title, running.settings.port)
    indexed = running.index.db.query("SELECT path FROM instances")
    assert all(running.spool.absolute(row["path"]).is_file() for row in indexed)
    assert len(indexed) == len(running.spool_files()) == outcomes["stored"] + 1
    assert outcomes["stored"] and len(statuses) > 1  # the cases reached both ends
    record_figures(
        "fuzz_datasets", cases=cases, associations=sender.associations, statuses=dict(statuses),
        outcomes=dict(outcomes), mutation_kinds=dict(kinds),
    )


@pytest.mark.parametrize(
    "keyword, replaced, status",
    [
        ("Rows", element(ROWS, "US", b"\x10"), Status.CANNOT_UNDERSTAND),
        ("PixelData", element(PIXEL_DATA, "OW", b""), Status.CANNOT_UNDERSTAND),
        ("Rows", element(ROWS, "DS", b"inf "), Status.CANNOT_UNDERSTAND),
        ("SamplesPerPixel", element(tag_for_keyword("SamplesPerPixel"), "DS", b"inf "), Status.CANNOT_UNDERSTAND),
        ("ImageType", element(tag_for_keyword("ImageType"), "US", b"\x00\x01"), Status.SUCCESS),
    ],
    ids=["odd-length Rows", "empty Pixel Data", "Rows inf", "SamplesPerPixel inf", "ImageType a number"],
)
def test_a_malformed_element_is_not_a_processing_failure(
    fuzzed_node: FuzzedNode, tmp_path: Path, keyword: str, replaced: bytes, status: Status
) -> None:
    """Each raised inside the receiver (0x0110 and a traceback): pydicom converted the odd-length value
    only when the header was read, an empty Pixel Data's value is None, int(inf) is an OverflowError,
    and a one-number ImageType is not iterable. A number as ImageType is only odd: it is stored."""
    running, _ = fuzzed_node
    ds = phantom(slices=1).datasets()[0]
    path = tmp_path / "malformed.dcm"
    path.write_bytes(encode_file(ds, {tag_for_keyword(keyword): replaced}, ExplicitVRLittleEndian))
    sender = Sender(running)
    try:
        assert sender.store(path) == status
    finally:
        sender.release()
    assert running.indexed() == (status == Status.SUCCESS)


# --- 2. malformed PDUs --------------------------------------------------------------------

PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
             0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}
#: What an acceptor may send (PS3.8 9.3): not an A-ASSOCIATE-RQ, not an A-RELEASE-RQ to a peer that did not release.
ANSWERS = {0x02, 0x03, 0x04, 0x06, 0x07}
READ_TIMEOUT_SECONDS = 30.0


VALID_RQ = associate_rq()


def _item_length_offsets(rq: bytes) -> list[int]:
    """Where the 2-byte length of each variable item and sub-item of an A-ASSOCIATE-RQ is."""
    offsets, stack, at = [], [len(rq)], 74
    while stack:
        if at >= stack[-1]:
            stack.pop()
            continue
        kind, length = rq[at], struct.unpack(">H", rq[at + 2 : at + 4])[0]
        offsets.append(at + 2)
        if kind in (0x20, 0x50):  # a presentation context or user information item holds sub-items
            stack.append(at + 4 + length)
            at += 8 if kind == 0x20 else 4
        else:
            at += 4 + length
    return offsets


ITEM_LENGTH_OFFSETS = _item_length_offsets(VALID_RQ)


lengths = st.one_of(st.sampled_from((0, 1, 5, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)), st.integers(0, 0xFFFFFFFF))


@st.composite
def mutated_rq(draw: st.DrawFn) -> bytes:
    rq = bytearray(VALID_RQ)
    how = draw(st.sampled_from(("flip", "truncate", "length", "item length", "field")))
    if how == "flip":
        flips = st.lists(st.tuples(st.integers(0, len(rq) - 1), st.integers(1, 255)), min_size=1, max_size=8)
        for at, value in draw(flips):
            rq[at] ^= value
    elif how == "truncate":
        del rq[draw(st.integers(0, len(rq) - 1)) :]
    elif how == "length":
        rq[2:6] = struct.pack(">L", draw(lengths))
    elif how == "item length":
        at = draw(st.sampled_from(ITEM_LENGTH_OFFSETS))
        rq[at : at + 2] = struct.pack(">H", draw(st.integers(0, 0xFFFF)))
    else:  # protocol version, AE titles
        at = draw(st.sampled_from((6, 10, 26)))
        printable = st.text("ABCZ019 _", min_size=16, max_size=16).map(str.encode)
        rq[at : at + 16] = draw(st.one_of(st.binary(min_size=16, max_size=16), printable))
    return bytes(rq)


after_association = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.builds(lambda length, pdv: pdu(0x04, pdv, length), st.one_of(st.none(), lengths), st.binary(max_size=200)),
    st.builds(  # a P-DATA-TF whose one PDV claims any length, context, control header
        lambda pdv_length, context, control, data: pdu(0x04, struct.pack(">LBB", pdv_length, context, control) + data),
        lengths, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=100),
    ),
    st.builds(pdu, st.sampled_from((0x01, 0x02, 0x03, 0x05, 0x06, 0x07)), st.binary(max_size=40)),
    st.just(VALID_RQ),
)


@dataclasses.dataclass(frozen=True)
class PduCase:
    """What to write on a fresh connection; ``associate`` first completes a valid association."""

    kind: str
    data: bytes
    associate: bool = False


pdu_cases = st.one_of(
    st.builds(PduCase, st.just("garbage"), st.binary(max_size=300)),
    st.builds(PduCase, st.just("absurd header"), st.builds(pdu, st.integers(0, 255), st.binary(max_size=64), lengths)),
    st.builds(PduCase, st.just("mutated A-ASSOCIATE-RQ"), mutated_rq()),
    st.builds(PduCase, st.just("garbage after association"), after_association, st.just(True)),
)


def read_pdus(connection: socket.socket) -> list[int]:
    """The types of the PDUs the server sends until it closes; each must be whole and well-framed."""
    received = bytearray()
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            break  # a reset is a close
        if not chunk:
            break
        received += chunk
    kinds = []
    while received:
        assert len(received) >= 6, f"a partial PDU header: {bytes(received)!r}"
        kind, _, length = struct.unpack(">BBL", received[:6])
        assert len(received) >= 6 + length, f"a truncated {PDU_NAMES.get(kind, kind)}"
        kinds.append(kind)
        del received[: 6 + length]
    return kinds


def play(port: int, case: PduCase) -> str:
    """Write one case on a new connection, half-close it, and name what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_SECONDS) as connection:
        answered: list[int] = []
        try:
            if case.associate:
                connection.sendall(VALID_RQ)
                head = connection.recv(6, socket.MSG_WAITALL)
                assert head[:1] == b"\x02", f"the valid A-ASSOCIATE-RQ was answered {head!r}"
                connection.recv(struct.unpack(">L", head[2:6])[0], socket.MSG_WAITALL)
                answered.append(0x02)
            connection.sendall(case.data)
            connection.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first: what it sent before is still read below
        answered += read_pdus(connection)
    assert set(answered) <= ANSWERS, [PDU_NAMES.get(k, k) for k in answered]
    return answer_name(answered)


def answer_name(kinds: list[int]) -> str:
    """``A-ASSOCIATE-AC then A-ABORT`` (repeats shown once: a server in Sta13 aborts each PDU it still reads)."""
    names = [PDU_NAMES[k] for k in kinds]
    return " then ".join(n for i, n in enumerate(names) if i == 0 or names[i - 1] != n) or "closed without a PDU"


def test_malformed_pdus_leave_the_server_serving(fuzzed_node: FuzzedNode, monkeypatch: pytest.MonkeyPatch) -> None:
    running, server = fuzzed_node
    port = running.settings.port
    outcomes: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    died: list[str] = []

    def thread_died(args: threading.ExceptHookArgs) -> None:
        """No thread of the node may die, whatever it reads (pynetdicom's did on an A-ABORT with an invalid source)."""
        died.append("".join(traceback.format_exception(args.exc_value)))

    monkeypatch.setattr(threading, "excepthook", thread_died)

    @fuzz_settings(examples=300)
    @given(case=pdu_cases)
    def one_case(case: PduCase) -> None:
        outcomes[play(port, case)] += 1
        kinds[case.kind] += 1

    one_case()
    assert died == []
    wait_until(lambda: not server.active_associations, timeout=READ_TIMEOUT_SECONDS, what="no association left")
    assert echo_ok(running.settings.ae_title, port)
    wait_until(lambda: not server.active_associations, timeout=READ_TIMEOUT_SECONDS, what="the echo association ended")
    record_figures("fuzz_pdus", cases=sum(kinds.values()), case_kinds=dict(kinds), answers=dict(outcomes))


def test_silent_peers_are_closed_after_the_network_timeout(fuzzed_node: FuzzedNode) -> None:
    """Accepted sockets blocked: a peer that sent part of a PDU and then nothing held its thread and
    an association slot for as long as it kept the connection open (these reads timed out here)."""
    running, server = fuzzed_node
    silent = {
        "nothing": b"",
        "half a PDU header": b"\x01\x00\x00",
        "part of an A-ASSOCIATE-RQ": pdu(0x01, VALID_RQ[6:40], length=len(VALID_RQ) - 6),
        "an A-ASSOCIATE-RQ, then nothing": VALID_RQ,
    }
    address = ("127.0.0.1", running.settings.port)
    connections = [socket.create_connection(address, timeout=READ_TIMEOUT_SECONDS) for _ in silent]
    try:
        for connection, data in zip(connections, silent.values()):
            connection.sendall(data)  # and nothing more: the node's network timeout (2 s) must end each
        answers = {name: read_pdus(connection) for name, connection in zip(silent, connections)}
    finally:
        for connection in connections:
            connection.close()
    assert all(set(kinds) <= ANSWERS for kinds in answers.values())
    wait_until(lambda: not server.active_associations, timeout=READ_TIMEOUT_SECONDS, what="no association left")
    assert echo_ok(running.settings.ae_title, running.settings.port)
    record_figures(
        "fuzz_pdus_silent_peers", cases=len(silent),
        answers={name: answer_name(kinds) for name, kinds in answers.items()},
    )


def test_closed_connections_do_not_hold_association_slots(tmp_path: Path) -> None:
    """pynetdicom kept a thread, counted against max_associations, for the ACSE timeout (the
    network timeout, 60 s) after a peer closed before its A-ASSOCIATE-RQ: a TCP health check
    every few seconds kept every peer out."""
    running, server = start_in_process(tmp_path)  # the default network timeout
    try:
        address, count = ("127.0.0.1", running.settings.port), running.settings.max_associations + 2
        connections = [socket.create_connection(address) for _ in range(count)]
        wait_until(lambda: len(server.active_associations) == count, timeout=20, what="the connections accepted")
        for connection in connections:
            connection.close()
        wait_until(lambda: not server.active_associations, timeout=20, what="the closed connections' threads to end")
        assert echo_ok(running.settings.ae_title, running.settings.port)
    finally:
        server.shutdown()


# --- 3a. malformed series headers to the assembly rules -------------------------------------

any_float = st.one_of(st.sampled_from((math.nan, math.inf, -math.inf, 0.0, 1e308)), st.floats())
orientations = st.one_of(
    st.none(),
    st.sampled_from([(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), (1.0, 0.0, 0.0) * 2, (0.0,) * 6]),
    st.tuples(*[any_float] * 6),
)
#: The values read_header can give each field (right counts, any numbers, since DS "nan" is a number).
HEADER_FIELDS = {
    "modality": st.sampled_from(("CT", "MR", "")),
    "sop_class_uid": st.sampled_from((CTImageStorage, EnhancedCTImageStorage, SecondaryCaptureImageStorage)),
    "image_type": st.sampled_from(((), ("ORIGINAL", "PRIMARY", "AXIAL"), ("DERIVED", "SECONDARY"), ("",))),
    "orientation": orientations,
    "position": st.one_of(st.none(), st.tuples(any_float, any_float, any_float)),
    "pixel_spacing": st.one_of(st.none(), st.tuples(any_float, any_float)),
    "slice_thickness": st.one_of(st.none(), any_float),
    "rows": st.one_of(st.none(), st.integers(-1, 70000)),
    "columns": st.one_of(st.none(), st.integers(-1, 70000)),
    "frames": st.integers(-1, 3),
}
BASE_HEADERS = [read_header(ds) for ds in phantom(slices=30).datasets()]


@st.composite
def header_series(draw: st.DrawFn) -> list[InstanceHeader]:
    """A phantom series' headers, some slices changed, duplicated or removed, some fields everywhere."""
    headers = list(BASE_HEADERS[: draw(st.integers(0, len(BASE_HEADERS)))])
    for _ in range(draw(st.integers(0, 2))):  # one field the same wrong way on every slice
        name = draw(st.sampled_from(sorted(HEADER_FIELDS)))
        value = draw(HEADER_FIELDS[name])
        headers = [dataclasses.replace(h, **{name: value}) for h in headers]
    for _ in range(draw(st.integers(0, 6))):
        if not headers:
            break
        at = draw(st.integers(0, len(headers) - 1))
        how = draw(st.sampled_from(("field", "field", "duplicate", "remove")))
        if how == "field":
            name = draw(st.sampled_from(sorted(HEADER_FIELDS)))
            headers[at] = dataclasses.replace(headers[at], **{name: draw(HEADER_FIELDS[name])})
        elif how == "duplicate":
            headers.append(dataclasses.replace(headers[at], sop_instance_uid=headers[at].sop_instance_uid + ".1"))
        else:
            del headers[at]
    return headers


def _finite_geometry(header: InstanceHeader) -> bool:
    numbers = (*(header.orientation or ()), *(header.position or ()), *(header.pixel_spacing or ()))
    return all(math.isfinite(v) for v in numbers)


def test_malformed_series_headers_get_a_reason_or_pass() -> None:
    reasons: collections.Counter[str] = collections.Counter()
    cases = 0

    @fuzz_settings(examples=600)
    @given(headers=header_series(), min_slices=st.sampled_from((20, 2)))
    def one_case(headers: list[InstanceHeader], min_slices: int) -> None:
        nonlocal cases
        cases += 1
        reason = first_failure(headers, dataclasses.replace(AssemblySettings(), min_slices=min_slices))
        assert reason is None or (isinstance(reason, str) and reason)
        if reason is None:
            assert all(_finite_geometry(h) for h in headers), "a series with non-finite geometry passed"
        reasons["eligible" if reason is None else reason.split(":")[0]] += 1

    one_case()
    record_figures("fuzz_rules", cases=cases, outcomes=dict(reasons))


@pytest.mark.parametrize("orientation", [(1.0, 0.0, 0.0, 1.0, 0.0, 0.0), (0.0,) * 6])
def test_an_orientation_without_a_plane_is_a_reason(orientation: tuple[float, ...]) -> None:
    """Parallel or zero direction cosines made ``first_failure`` raise ValueError."""
    headers = [dataclasses.replace(h, orientation=orientation) for h in BASE_HEADERS]
    assert first_failure(headers, AssemblySettings()).startswith("axial: ImageOrientationPatient")


def test_a_slice_at_a_nan_position_is_a_reason() -> None:
    """The last slice at a NaN position passed every rule (NaN positions make no gap)."""
    headers = BASE_HEADERS[:-1] + [dataclasses.replace(BASE_HEADERS[-1], position=(0.0, 0.0, math.nan))]
    assert first_failure(headers, AssemblySettings()).startswith("geometry present:")


# --- 3b. malformed series files to the volume builder ---------------------------------------


@dataclasses.dataclass(frozen=True)
class MalformedSeries:
    """A phantom series on disk: changes on every slice, on some slices, and to the set of files."""

    everywhere: tuple[Mutation, ...]
    per_slice: tuple[tuple[int, MalformedInstance], ...]
    extra: tuple[str, ...]


series_changes = st.sampled_from(
    ("duplicate file", "duplicate, new UID", "other series", "other size", "remove", "RLE slice")
)
malformed_series = st.builds(
    MalformedSeries,
    everywhere=st.lists(mutations(), max_size=2).map(tuple),
    per_slice=st.lists(st.tuples(st.integers(0, 5), malformed_instances), max_size=3).map(tuple),
    extra=st.lists(series_changes, max_size=2).map(tuple),
)


def write_series(case: MalformedSeries, directory: Path) -> list[Path]:
    """The case's files in ``directory``, as the volume builder would be given them."""
    datasets = phantom().datasets()
    changed = dict(case.per_slice)
    paths = []
    for index, ds in enumerate(datasets):
        instance = changed.get(index, MalformedInstance((), ExplicitVRLittleEndian, ()))
        instance = dataclasses.replace(instance, mutations=case.everywhere + instance.mutations)
        paths.append(directory / f"{index}.dcm")
        paths[-1].write_bytes(instance.encode(ds))
    for number, change in enumerate(case.extra):
        extra = directory / f"extra{number}.dcm"
        if change == "duplicate file":
            extra.write_bytes(paths[2].read_bytes())
        elif change == "duplicate, new UID":
            ds = copy.deepcopy(datasets[2])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = TEST_UID_ROOT + f"6.2.{number}"
            extra.write_bytes(encode_file(ds, {}, ExplicitVRLittleEndian))
        elif change in ("other series", "other size"):
            other = phantom(rows=20, series="1") if change == "other size" else phantom(series="2")
            extra.write_bytes(encode_file(other.datasets()[3], {}, ExplicitVRLittleEndian))
        elif change == "remove":
            paths.pop(3).unlink(missing_ok=True)
            continue
        else:
            ds = copy.deepcopy(datasets[4])
            ds.compress(RLELossless)
            pydicom.dcmwrite(directory / "4.dcm", ds, enforce_file_format=True)
            continue
        paths.append(extra)
    return paths


def test_malformed_series_files_give_a_volume_or_a_volume_error(tmp_path: Path) -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    cases = 0

    @fuzz_settings(examples=200)
    @given(case=malformed_series)
    def one_case(case: MalformedSeries) -> None:
        nonlocal cases
        cases += 1
        directory = tmp_path / f"case{cases}"
        directory.mkdir()
        try:
            built = build_volume(write_series(case, directory))
        except VolumeError as error:
            assert str(error)
            outcomes[reason_kind(str(error))] += 1
            return
        volume = built.volume
        assert np.isfinite(volume.spacing).all() and min(volume.spacing) > 0
        assert np.isfinite(volume.origin).all() and np.isfinite(volume.direction).all()
        outcomes["volume"] += 1

    one_case()
    assert outcomes["volume"] and len(outcomes) > 1
    record_figures("fuzz_volume", cases=cases, outcomes=dict(outcomes))


def _with(replaced: dict[str, tuple[str, bytes]]) -> dict[int, bytes | None]:
    return {tag_for_keyword(k): element(tag_for_keyword(k), vr, value) for k, (vr, value) in replaced.items()}


@pytest.mark.parametrize(
    "replaced",
    [
        {"RescaleSlope": ("DS", b"abc ")},
        {"RescaleIntercept": ("DS", b"1\\2 ")},
        {"InstanceNumber": ("IS", b"x1")},
        {"NumberOfFrames": ("IS", b"ab")},
        {"Rows": ("US", b"\x10")},
        {"Rows": ("US", b"\x10\x00\x10\x00")},
        {"PixelSpacing": ("DS", b"1\\1\\1 ")},
        {"PixelSpacing": ("DS", b"inf\\inf ")},
        {"ImagePositionPatient": ("DS", b"0\\0\\nan ")},
        {"PixelPaddingValue": ("US", b"\x01")},
        {"PixelPaddingValue": ("DS", b"x ")},
        {"PixelPaddingValue": ("US", b"\x01\x00\x02\x00")},
        {"PixelPaddingValue": ("US", b"\x01\x00"), "PixelPaddingRangeLimit": ("DS", b"x ")},
    ],
    ids=lambda replaced: ",".join(f"{k}={v[1]!r}" for k, v in replaced.items()),
)
def test_a_malformed_value_on_every_slice_is_a_volume_error(
    tmp_path: Path, replaced: dict[str, tuple[str, bytes]]
) -> None:
    """Each of these raised ValueError, TypeError or pydicom's BytesLengthException, or gave a NaN geometry."""
    paths = []
    for index, ds in enumerate(phantom().datasets()):
        paths.append(tmp_path / f"{index}.dcm")
        paths[-1].write_bytes(encode_file(ds, _with(replaced), ExplicitVRLittleEndian))
    with pytest.raises(VolumeError):
        build_volume(paths)


def test_a_series_without_series_uid_and_with_several_frames_of_reference_is_a_volume_error(tmp_path: Path) -> None:
    """The warning about frames of reference read SeriesInstanceUID as an attribute (AttributeError)."""
    paths = []
    for index, ds in enumerate(phantom().datasets()):
        del ds.SeriesInstanceUID
        ds.FrameOfReferenceUID = TEST_UID_ROOT + f"6.3.{index}"
        paths.append(tmp_path / f"{index}.dcm")
        paths[-1].write_bytes(encode_file(ds, {}, ExplicitVRLittleEndian))
    build_volume(paths)  # the builder does not need the UID; the receiver refuses such files anyway


def test_a_matrix_too_large_for_memory_is_a_volume_error(tmp_path: Path) -> None:
    """65535 x 65535 slices (RLE, so the receiver's length check does not apply) raised MemoryError."""
    paths = []
    for index, ds in enumerate(phantom().datasets()):
        ds.Rows = ds.Columns = 65535
        paths.append(tmp_path / f"{index}.dcm")
        paths[-1].write_bytes(encode_file(ds, {PIXEL_DATA: encapsulated(b"\0" * 64)}, RLELossless))
    with pytest.raises(VolumeError):
        build_volume(paths)
