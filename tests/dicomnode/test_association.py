"""The node's own acceptor (``dicomnode.net``) against peers below and above the DICOM libraries:
PDUs written by hand and read back with pynetdicom's codec, and dcmtk's storescu.

What the receiver tests cover (statuses, titles, limits, TLS) is not repeated here: this is the
protocol itself, negotiation, fragments, commands the node does not serve, and stopping.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)

from dicomnode.net.part10 import IMPLEMENTATION_CLASS_UID
from dicomnode.net.pdu import PduReader, PeerClosed
from dicomnode.net.server import AssociationServer
from dicomnode.status import Status
from peers import storescu, wait_until
from raw_pdus import IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION, associate_rq, pdu, read_pdu
from receivers import RunningReceiver, start_in_process

C_FIND_RQ, C_ECHO_RQ = 0x0020, 0x0030


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[RunningReceiver, AssociationServer]]:
    running, server = start_in_process(tmp_path)
    yield running, server
    server.shutdown()


def associated(port: int, rq: bytes) -> tuple[socket.socket, A_ASSOCIATE_AC]:
    """A connection on which ``rq`` was accepted, and the A-ASSOCIATE-AC as pynetdicom reads it."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(rq)
    kind, body = read_pdu(connection)
    assert kind == 0x02, f"A-ASSOCIATE-RQ answered with PDU type {kind}"
    ac = A_ASSOCIATE_AC()
    ac.decode(struct.pack(">BBL", kind, 0, len(body)) + body)
    return connection, ac


def command_pdu(context_id: int, command_field: int, message_id: int) -> bytes:
    """A P-DATA-TF with a request's whole command set (no data set), encoded by pynetdicom."""
    command = Dataset()
    command.AffectedSOPClassUID = VERIFICATION.decode()
    command.CommandField = command_field
    command.MessageID = message_id
    command.CommandDataSetType = 0x0101
    encoded = encode(command, True, True)
    assert encoded is not None
    command.CommandGroupLength = len(encoded)
    encoded = encode(command, True, True)
    assert encoded is not None
    return pdu(0x04, struct.pack(">LBB", len(encoded) + 2, context_id, 0x03) + encoded)


def response_to(connection: socket.socket) -> Dataset:
    """The command set of the node's next P-DATA-TF (one PDV, a whole command)."""
    kind, body = read_pdu(connection)
    assert kind == 0x04, f"PDU type {kind} where a response was due"
    length, _, control = struct.unpack(">LBB", body[:6])
    assert control == 0x03 and len(body) == 4 + length
    return decode(io.BytesIO(body[6:]), True, True)


def test_an_unserved_command_is_answered_and_the_association_goes_on(node: tuple[RunningReceiver, AssociationServer]) -> None:
    running, _ = node
    connection, _ = associated(running.settings.port, associate_rq(called=running.settings.ae_title.encode()))
    with connection:
        connection.sendall(command_pdu(1, C_FIND_RQ, 7))
        find = response_to(connection)
        assert (find.CommandField, find.MessageIDBeingRespondedTo, find.Status) == (0x8020, 7, Status.UNRECOGNIZED_OPERATION)
        connection.sendall(command_pdu(1, C_ECHO_RQ, 8))
        echo = response_to(connection)
        assert (echo.CommandField, echo.MessageIDBeingRespondedTo, echo.Status) == (0x8030, 8, Status.SUCCESS)
        assert echo.AffectedSOPClassUID == VERIFICATION.decode()
        connection.sendall(pdu(0x05, bytes(4)))
        assert read_pdu(connection)[0] == 0x06  # A-RELEASE-RP


def test_each_proposed_context_gets_its_answer(node: tuple[RunningReceiver, AssociationServer]) -> None:
    """The requestor's first transfer syntax the node accepts is chosen; an unknown SOP class
    and a context without an accepted transfer syntax are refused with their reasons."""
    running, _ = node
    ct, unknown_ts = CTImageStorage.encode(), b"1.2.3.999"
    contexts = (
        (1, ct, (unknown_ts, ExplicitVRLittleEndian.encode(), ImplicitVRLittleEndian.encode())),
        (3, b"1.2.3.4.5.6", (IMPLICIT_VR_LITTLE_ENDIAN,)),
        (5, ct, (unknown_ts,)),
        (7, VERIFICATION, (IMPLICIT_VR_LITTLE_ENDIAN,)),
    )
    connection, ac = associated(running.settings.port, associate_rq(called=running.settings.ae_title.encode(), contexts=contexts))
    with connection:
        answers = {item.context_id: (item.result, item.transfer_syntax) for item in ac.presentation_context}
        assert answers[1] == (0, ExplicitVRLittleEndian)
        assert answers[3][0] == 3  # abstract syntax not supported
        assert answers[5][0] == 4  # transfer syntaxes not supported
        assert answers[7] == (0, ImplicitVRLittleEndian)
        assert ac.user_information.maximum_length == running.settings.max_pdu_bytes
        assert ac.user_information.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        connection.sendall(command_pdu(3, C_ECHO_RQ, 1))  # on a refused context: a protocol error
        assert read_pdu(connection)[0] == 0x07  # A-ABORT


def data_set_bytes(path: Path) -> bytes:
    """A DICOM file's bytes after its file meta group."""
    data = path.read_bytes()
    (group_length,) = struct.unpack("<L", data[140:144])
    return data[144 + group_length :]


def test_small_pdus_store_each_data_set_byte_for_byte(tmp_path: Path, phantom_dir: Path) -> None:
    """With a 4 kB maximum PDU, every slice arrives in ~130 PDUs: the fragments are joined as sent."""
    running, server = start_in_process(tmp_path, max_pdu_bytes=4096)
    try:
        storescu(phantom_dir, running.settings.ae_title, running.settings.port, calling="FRAGMENTS")
    finally:
        server.shutdown()
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in phantom_dir.glob("*.dcm")}
    stored = [running.spool.absolute(p) for p in running.spool_files()]
    assert len(stored) == len(sent) == 40
    for path in stored:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert meta.SourceApplicationEntityTitle == "FRAGMENTS"
        assert data_set_bytes(path) == data_set_bytes(sent[meta.MediaStorageSOPInstanceUID])


def test_stopping_aborts_open_associations(tmp_path: Path) -> None:
    running, server = start_in_process(tmp_path)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(VERIFICATION.decode())
    held = ae.associate("127.0.0.1", running.settings.port, ae_title=running.settings.ae_title)
    assert held.is_established
    started = time.monotonic()
    server.shutdown()
    assert time.monotonic() - started < 5  # not the network timeout (60 s)
    assert not server.active_associations
    wait_until(lambda: not held.is_established, 10, what="the peer to see its association end")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.settings.port), timeout=2)


def test_extended_negotiation_proposals_are_tolerated(node: tuple[RunningReceiver, AssociationServer], phantom_dir: Path) -> None:
    """Role selection, an asynchronous operations window and a user identity go unanswered
    (PS3.7 D.3.3: the defaults apply); the association serves as any other."""
    running, _ = node
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CTImageStorage, True, False
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 4
    identity = UserIdentityNegotiation()
    identity.user_identity_type, identity.primary_field = 1, b"radiographer"
    ae = AE(ae_title="EXTNEG")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    association = ae.associate(
        "127.0.0.1", running.settings.port, ae_title=running.settings.ae_title, ext_neg=[role, window, identity]
    )
    assert association.is_established
    try:
        status = association.send_c_store(pydicom.dcmread(next(phantom_dir.glob("*.dcm"))))
        assert int(status.Status) == Status.SUCCESS
    finally:
        association.release()
    assert running.indexed() == 1


def test_pdus_read_several_at_a_time_keep_their_bodies_whole() -> None:
    """The reader takes what the kernel has: PDUs several to a receive, one larger than its
    buffer, one across a buffer's end. Each body is as sent, and stays so after later reads
    (a data set's fragments are kept until its last one arrives)."""
    sizes = [10, 3000, PduReader.BUFFER_BYTES - 100, 50, PduReader.BUFFER_BYTES + 5000, 7]
    bodies = [bytes([number]) * size for number, size in enumerate(sizes)]
    sending, receiving = socket.socketpair()
    sender = threading.Thread(target=lambda: (sending.sendall(b"".join(pdu(0x04, body) for body in bodies)), sending.close()))
    sender.start()
    reader = PduReader(receiving)
    read = [reader.read(0) for _ in bodies]
    sender.join()
    assert [kind for kind, _ in read] == [0x04] * len(bodies)
    assert [bytes(body) for _, body in read] == bodies
    with pytest.raises(PeerClosed):
        reader.read(0)
    receiving.close()
