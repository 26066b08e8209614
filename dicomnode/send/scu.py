"""C-STORE and C-ECHO as a service class user (pynetdicom), to a configured DICOM peer.

One association carries a whole batch: opening one per file costs a TCP and an A-ASSOCIATE
round trip each, and PACS count associations. The presentation contexts offered are exactly
those the batch needs, read from the files' meta information, each offering the file's own
transfer syntax first (so compressed objects go as stored) plus explicit and implicit VR little
endian (so a peer that accepts only one of those still gets uncompressed files).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.sop_class import Verification

from dicomnode.net.tls import ClientContext, TlsFileError, client_context
from dicomnode.send.outcome import DestinationUnavailable, OutcomeCallback, SendOutcome
from dicomnode.settings import DicomDestination

logger = logging.getLogger(__name__)

#: A-ASSOCIATE-RQ carries at most 128 presentation contexts (odd IDs 1..255, PS3.8 9.3.2.2).
MAX_CONTEXTS = 128

_ContextKey = tuple[str, str]  # (SOP class UID, transfer syntax UID of the file)


class NoContextAccepted(DestinationUnavailable):
    """The peer is up but accepted none of the presentation contexts: it will not take these
    objects (a SOP class it does not support), so each file counts as refused, not postponed.
    """


class _AssociationWatch:
    """Event handlers that remember why an association failed, for a useful error message.

    pynetdicom only logs the reasons; the sender needs them in ``last_error`` and in its own
    warning. Also turns Nagle off: without TCP_NODELAY each small PDU may wait for the peer's
    delayed ACK (tens of ms per object on loopback).
    """

    def __init__(self, tls: ClientContext | None = None) -> None:
        self.connected = False
        self.answer: A_ASSOCIATE | A_ABORT | A_P_ABORT | None = None
        self.tls = tls

    def handlers(self) -> list[tuple[evt.NotificationEvent, Callable[[evt.Event], None]]]:
        return [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_ACSE_RECV, self._on_acse)]

    def _on_open(self, event: evt.Event) -> None:
        self.connected = True
        transport = getattr(event.assoc.dul.socket, "socket", None)
        if isinstance(transport, socket.socket):
            transport.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_acse(self, event: evt.Event) -> None:
        primitive = event.primitive
        if isinstance(primitive, (A_ASSOCIATE, A_ABORT, A_P_ABORT)):
            self.answer = primitive

    def failure(self, destination: DicomDestination, association: Association) -> DestinationUnavailable:
        """The exception that says why ``association`` was not established."""
        where = f"{destination.ae_title}@{destination.host}:{destination.port}"
        answer = self.answer
        if answer is None:
            # pynetdicom race: a peer that rejects and closes at once (storescp --refuse) can
            # close the socket before the ACSE reads the A-ASSOCIATE-RJ, which then stays
            # unread in the DUL queue and the association is reported as merely aborted.
            unread = association.dul.peek_next_pdu()
            if isinstance(unread, (A_ASSOCIATE, A_ABORT, A_P_ABORT)):
                answer = unread
        if self.tls is not None and self.tls.failure is not None:
            return DestinationUnavailable(f"TLS {self.tls.failure} ({where})")
        if not self.connected:
            return DestinationUnavailable(f"cannot connect to {where} (refused, unreachable or timed out)")
        if isinstance(answer, A_ASSOCIATE) and answer.result in (0x01, 0x02):
            return DestinationUnavailable(
                f"association rejected by {where}: {answer.result_str}, {answer.source_str}: {answer.reason_str}"
            )
        if isinstance(answer, A_ASSOCIATE) and answer.result == 0x00:
            return NoContextAccepted(f"{where} accepted none of the SOP classes/transfer syntaxes offered")
        if isinstance(answer, (A_ABORT, A_P_ABORT)):
            return DestinationUnavailable(f"association aborted by {where}")
        return DestinationUnavailable(
            f"no answer from {where} to the association request (connection closed or timed out)"
        )


@contextmanager
def _association(
    destination: DicomDestination,
    calling_ae_title: str,
    timeout: float,
    contexts: Sequence[tuple[str, Sequence[str]]],
) -> Iterator[Association]:
    """An established association, released on the way out (aborted if the body raised).

    Raises :class:`DestinationUnavailable` with the reason when it cannot be established.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, list(transfer_syntaxes))
    tls_args: tuple[ClientContext, str] | None = None
    if destination.tls is not None:  # a fresh context per association: renewed certificates are read
        tls = destination.tls
        try:
            context = client_context(tls.ca_certificates, tls.certificate, tls.private_key)
        except TlsFileError as error:  # loaded at start-up: since removed or replaced
            raise DestinationUnavailable(f"TLS for {destination.name} not set up: {error}") from None
        tls_args = (context, tls.server_name or destination.host)
    watch = _AssociationWatch(tls_args[0] if tls_args else None)
    association = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=watch.handlers(),
        tls_args=tls_args,
    )
    if not association.is_established:
        raise watch.failure(destination, association)
    try:
        yield association
    except BaseException:
        if association.is_established:
            association.abort()
        raise
    if association.is_established:
        association.release()


def _park_reactor(association: Association, settle_seconds: float = 0.05) -> None:
    """Park pynetdicom's reactor thread before a request, closing a race pynetdicom leaves open.

    ``send_c_store``/``send_c_echo`` pause the association's reactor by clearing a checkpoint
    and waiting for its ``_is_paused`` flag. The flag is also true for an instant *after* the
    reactor has passed the checkpoint; a reactor caught there takes the peer's response off the
    queue ("Received unexpected C-STORE service message") and the request then waits for the
    DIMSE timeout and aborts (seen under CPU load, about once per thousand objects). Seeing the
    flag go false then true again proves the reactor came back to the cleared checkpoint, where
    it blocks. Private attributes: without them this does nothing and pynetdicom's own wait
    applies. The caller must set the checkpoint again if the request raises.
    """
    checkpoint = getattr(association, "_reactor_checkpoint", None)
    if not isinstance(checkpoint, threading.Event) or not hasattr(association, "_is_paused"):
        return
    checkpoint.clear()
    seen_running = False
    deadline = time.monotonic() + settle_seconds
    while association.is_alive():
        if not association._is_paused:
            seen_running = True
        elif seen_running or time.monotonic() >= deadline:
            return  # parked (or flagged paused for the whole settle time: parked already)
        time.sleep(0.0001)


@contextmanager
def _parked(association: Association) -> Iterator[None]:
    """Run one DIMSE request with the reactor parked; resume it even if the request raises."""
    _park_reactor(association)
    try:
        yield
    finally:
        checkpoint = getattr(association, "_reactor_checkpoint", None)
        if isinstance(checkpoint, threading.Event):
            checkpoint.set()


def _offered_syntaxes(transfer_syntax: str) -> list[str]:
    """The file's own syntax first, then the two uncompressed little endian ones."""
    offered = [transfer_syntax]
    offered += [ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts != transfer_syntax]
    return offered


def _context_key(path: Path) -> _ContextKey:
    """SOP class and transfer syntax from the file meta (cheap: the dataset is not read)."""
    meta = read_file_meta_info(path)
    sop_class = meta.get("MediaStorageSOPClassUID")
    transfer_syntax = meta.get("TransferSyntaxUID")
    if not sop_class or not transfer_syntax:
        raise InvalidDicomError("file meta lacks Media Storage SOP Class UID or Transfer Syntax UID")
    return str(sop_class), str(transfer_syntax)


def _batches(keys: dict[Path, _ContextKey]) -> list[list[Path]]:
    """Split the files so that no association needs more than :data:`MAX_CONTEXTS` contexts.

    Almost always one batch (the node sends two or three SOP classes); kept correct anyway.
    """
    batches: list[list[Path]] = []
    seen: list[set[_ContextKey]] = []
    for path, key in keys.items():
        for index, batch_keys in enumerate(seen):
            if key in batch_keys or len(batch_keys) < MAX_CONTEXTS:
                batch_keys.add(key)
                batches[index].append(path)
                break
        else:
            seen.append({key})
            batches.append([path])
    return batches


def _store_one(association: Association, path: Path, message_id: int) -> SendOutcome:
    """C-STORE one file; raises :class:`DestinationUnavailable` when the association is gone."""
    try:
        dataset = dcmread(path)
    except (OSError, InvalidDicomError) as error:
        return SendOutcome(path, None, f"cannot read {path.name}: {error}")
    try:
        # The dataset is sent as stored: pydicom re-encodes the elements it read, and only
        # converts between explicit and implicit VR little endian when the peer chose so.
        with _parked(association):
            answer = association.send_c_store(dataset, msg_id=message_id)
    except RuntimeError as error:  # pynetdicom: the association ended just before the request
        raise DestinationUnavailable(f"association ended before the C-STORE: {error}") from error
    except (ValueError, AttributeError) as error:
        # pynetdicom's documented refusals to send: no accepted context for this class and
        # syntax or an unencodable dataset (ValueError), a missing UID or syntax (AttributeError).
        return SendOutcome(path, None, f"not sent: {error}")
    status = answer.get("Status")
    if status is None:
        # pynetdicom returns an empty dataset on DIMSE timeout, abort or an invalid response.
        raise DestinationUnavailable(f"no valid answer to the C-STORE of {dataset.SOPInstanceUID}")
    return SendOutcome.from_status(path, int(status))


def send_files(
    destination: DicomDestination,
    calling_ae_title: str,
    paths: Sequence[Path],
    timeout: float,
    on_outcome: OutcomeCallback | None = None,
) -> list[SendOutcome]:
    """C-STORE ``paths`` (DICOM files with meta) to ``destination`` over one association.

    Returns one outcome per file, in order of sending; ``on_outcome`` is called with each as
    soon as it is known. Raises :class:`DestinationUnavailable` (with the outcomes completed so
    far) when the peer cannot be reached, rejects the association or drops it mid-batch.
    """
    outcomes: list[SendOutcome] = []

    def report(outcome: SendOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    keys: dict[Path, _ContextKey] = {}
    for path in paths:
        try:
            keys[path] = _context_key(path)
        except (OSError, InvalidDicomError) as error:
            report(SendOutcome(path, None, f"cannot read the file meta of {path.name}: {error}"))
    message_id = 0
    for batch in _batches(keys):
        contexts = {keys[path]: _offered_syntaxes(keys[path][1]) for path in batch}
        try:
            with _association(
                destination, calling_ae_title, timeout, [(key[0], syntaxes) for key, syntaxes in contexts.items()]
            ) as association:
                for path in batch:
                    if not association.is_established:
                        raise DestinationUnavailable(f"association with {destination.name} was aborted")
                    message_id = message_id % 65535 + 1
                    report(_store_one(association, path, message_id))
        except NoContextAccepted as error:
            for path in batch:
                report(SendOutcome(path, None, error.reason))
        except DestinationUnavailable as error:
            raise DestinationUnavailable(error.reason, outcomes) from None
    return outcomes


def echo(destination: DicomDestination, calling_ae_title: str, timeout: float) -> int:
    """C-ECHO ``destination``; return the status it answered (0x0000 is success).

    Raises :class:`DestinationUnavailable` when the association fails or no answer comes.
    """
    with _association(destination, calling_ae_title, timeout, [(Verification, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])]) as assoc:
        with _parked(assoc):
            answer = assoc.send_c_echo()
    status = answer.get("Status")
    if status is None:
        raise DestinationUnavailable(f"no valid answer to the C-ECHO from {destination.name}")
    return int(status)
