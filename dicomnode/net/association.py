"""One accepted connection, from its A-ASSOCIATE-RQ to its release or abort (PS3.8 9.2).

The node's own acceptor, in place of pynetdicom's: per C-STORE, pynetdicom's threads polled
queues and sockets with sleeps and decoded every command and data set through its event
machinery, so a 512x512 slice cost ~9 ms of which the node's own work was ~3. Here the
connection's thread reads PDUs with as few blocking calls as it can, keeps a data set's
fragments as they arrived (no copy: the durable write takes them as they are), and answers from
the same thread: nothing waits on a timer.

Every outcome is defined: a negotiation that fails gets its A-ASSOCIATE-RJ, a PDU that breaks
PS3.8 an A-ABORT, a peer silent for the network timeout an A-ABORT and a closed connection,
and the thread never raises (a bug is logged with its traceback and aborts that association
only).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from dicomnode.net import pdu
from dicomnode.net.dimse import C_ECHO_RQ, C_STORE_RQ, Command, CommandError, parse_command, response
from dicomnode.net.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ReceivedFile, file_prefix
from dicomnode.status import Status

logger = logging.getLogger(__name__)

#: One data set larger than this is refused (an A-ABORT): a peer must not fill the memory.
MAX_DATA_SET_BYTES = 2 << 30

#: How long, and how much, a closing connection reads of what its peer still sends.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20

#: (result, source, reason) of an A-ASSOCIATE-RJ (PS3.8 9.3.4) and what it means in a log line.
Rejection = tuple[int, int, int, str]
CALLED_AE_NOT_RECOGNIZED: Rejection = (1, 1, 7, "called AE title not recognised")
CALLING_AE_NOT_RECOGNIZED: Rejection = (1, 1, 3, "calling AE title not allowed")
APPLICATION_CONTEXT_NOT_SUPPORTED: Rejection = (1, 1, 2, "application context not supported")
PROTOCOL_VERSION_NOT_SUPPORTED: Rejection = (1, 2, 2, "protocol version not supported")
LOCAL_LIMIT_EXCEEDED: Rejection = (2, 3, 2, "too many associations")

#: What the node does with one received instance: the file it is kept as, its command and the
#: calling AE title; returns the status to answer.
StoreHandler = Callable[[ReceivedFile, Command, str], int]


@dataclass(frozen=True)
class AcceptorPolicy:
    """What the node accepts: who may associate, which contexts, how much and how long."""

    ae_title: str
    #: Calling AE titles allowed; empty: any.
    allowed_calling_ae_titles: frozenset[str]
    abstract_syntaxes: frozenset[str]
    #: Accepted transfer syntaxes; a context gets the requestor's first one that is here.
    transfer_syntaxes: frozenset[str]
    #: The largest P-DATA-TF the node accepts (announced in the A-ASSOCIATE-AC; 0: no limit).
    max_pdu_bytes: int
    network_timeout_seconds: float

    def rejection(self, request: pdu.AssociateRequest) -> Rejection | None:
        """Why ``request`` is refused, or None."""
        if not request.protocol_version & 1:
            return PROTOCOL_VERSION_NOT_SUPPORTED
        if request.application_context != pdu.APPLICATION_CONTEXT:
            return APPLICATION_CONTEXT_NOT_SUPPORTED
        if request.called_ae != self.ae_title:
            return CALLED_AE_NOT_RECOGNIZED
        if self.allowed_calling_ae_titles and request.calling_ae not in self.allowed_calling_ae_titles:
            return CALLING_AE_NOT_RECOGNIZED
        return None

    def answers(self, request: pdu.AssociateRequest) -> list[pdu.ContextAnswer]:
        """The answer to each proposed presentation context."""
        answers = []
        for context in request.contexts:
            accepted = next((ts for ts in context.transfer_syntaxes if ts in self.transfer_syntaxes), None)
            if context.abstract_syntax not in self.abstract_syntaxes:
                result = pdu.ContextAnswer.ABSTRACT_SYNTAX_NOT_SUPPORTED
            elif accepted is None:
                result = pdu.ContextAnswer.TRANSFER_SYNTAXES_NOT_SUPPORTED
            else:
                result = pdu.ContextAnswer.ACCEPTED
            transfer_syntax = accepted if result == pdu.ContextAnswer.ACCEPTED else context.transfer_syntaxes[0]
            answers.append(pdu.ContextAnswer(context.context_id, result, transfer_syntax))
        return answers


class Association:
    """The protocol of one connection; :meth:`run` serves it to its end and closes it."""

    def __init__(
        self,
        connection: socket.socket,
        address: tuple[str, int],
        policy: AcceptorPolicy,
        slots: threading.BoundedSemaphore,
        store: StoreHandler,
    ) -> None:
        self.connection = connection
        self.address = address
        self.policy = policy
        self.slots = slots
        self.store = store
        self.calling_ae = ""
        self.reader = pdu.PduReader(connection)

    def peer(self) -> str:
        return f"{self.calling_ae} ({self.address[0]}:{self.address[1]})"

    def run(self) -> None:
        """Serve the connection until it is released, aborted, timed out or broken; never raises."""
        try:
            self.connection.settimeout(self.policy.network_timeout_seconds)
            if self.connection.family in (socket.AF_INET, socket.AF_INET6):
                # A small answer must leave at once, not wait for more to send (Nagle).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._negotiate_and_serve()
        except Exception:
            logger.exception("association from %s failed unexpectedly and was aborted", self.peer())
            self._send(pdu.abort())
        finally:
            self.close()

    def close(self) -> None:
        """Close gracefully: stop sending, read what the peer still sends (bounded), then close.

        Closing with unread bytes makes the kernel reset the connection, and a reset can
        discard the A-ABORT or A-RELEASE-RP the peer has not read yet; a peer that keeps
        talking is cut off after :data:`LINGER_SECONDS` or :data:`LINGER_BYTES`.
        """
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_SECONDS)
            drained = 0
            while drained < LINGER_BYTES:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass  # reset or closed by the peer, or the linger ran out: close regardless
        self.connection.close()

    def _send(self, data: bytes) -> bool:
        try:
            self.connection.sendall(data)
            return True
        except OSError:
            return False  # the peer is gone: nothing more to tell it

    def _negotiate_and_serve(self) -> None:
        try:
            kind, body = self.reader.read(pdu.MAX_ASSOCIATE_RQ_BYTES)
            if kind != pdu.ASSOCIATE_RQ:
                raise pdu.PduError(f"a PDU of type 0x{kind:02x} where an A-ASSOCIATE-RQ was due", pdu.PduError.UNEXPECTED_PDU)
            request = pdu.parse_associate_rq(body)
        except OSError as error:  # closed, reset, timed out, or a TLS error
            logger.debug("connection from %s:%s ended before an association: %s", *self.address[:2], error)
            return
        except pdu.PduError as error:
            logger.warning("connection from %s:%s aborted: %s", self.address[0], self.address[1], error)
            self._send(pdu.abort(error.reason))
            return
        self.calling_ae = request.calling_ae
        rejection = self.policy.rejection(request)
        if rejection is None and not self.slots.acquire(blocking=False):
            rejection = LOCAL_LIMIT_EXCEEDED
        if rejection is not None:
            logger.warning("association from %s to %s rejected: %s", self.peer(), request.called_ae, rejection[3])
            self._send(pdu.associate_rj(*rejection[:3]))
            return
        try:
            self._serve(request)
        finally:
            self.slots.release()

    def _serve(self, request: pdu.AssociateRequest) -> None:
        answers = self.policy.answers(request)
        accepted = {a.context_id: a.transfer_syntax for a in answers if a.result == pdu.ContextAnswer.ACCEPTED}
        ac = pdu.associate_ac(request, answers, self.policy.max_pdu_bytes, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
        if not self._send(ac):
            return
        logger.info(
            "association from %s accepted (%d of %d contexts; implementation %s)",
            self.peer(), len(accepted), len(answers), request.implementation_class_uid or "not named",
        )
        try:
            ended = self._messages(accepted)
        except TimeoutError:
            logger.warning(
                "association from %s aborted: nothing received for %g s", self.peer(), self.policy.network_timeout_seconds
            )
            self._send(pdu.abort())
            return
        except OSError as error:  # closed, reset, or a TLS error
            logger.warning("association from %s aborted: the connection was lost (%s)", self.peer(), error)
            return
        except (pdu.PduError, CommandError) as error:
            logger.warning("association from %s aborted: %s", self.peer(), error)
            self._send(pdu.abort(getattr(error, "reason", pdu.PduError.INVALID_PARAMETER)))
            return
        logger.info("association from %s %s", self.peer(), ended)

    def _messages(self, accepted: dict[int, str]) -> str:
        """Read and answer DIMSE messages until the peer releases ("released") or aborts ("aborted")."""
        command_bytes = bytearray()
        command: Command | None = None
        command_context = 0
        #: The instance being received: its file prefix, then the data set's fragments (kept
        #: as they arrived: the staged write takes them as they are).
        prefix = b""
        fragments: list[bytes | memoryview] = []
        data_bytes = 0
        while True:
            kind, body = self.reader.read(self.policy.max_pdu_bytes)
            if kind == pdu.RELEASE_RQ:
                self._send(pdu.release_rp())
                return "released"
            if kind == pdu.ABORT:
                return "aborted"
            if kind != pdu.P_DATA_TF:
                raise pdu.PduError(f"a PDU of type 0x{kind:02x} during an association", pdu.PduError.UNEXPECTED_PDU)
            for context_id, control, value in pdu.pdvs(body):
                if context_id not in accepted:
                    raise pdu.PduError(f"a PDV on presentation context {context_id}, which was not accepted")
                if control & pdu.COMMAND_BIT:
                    if command is not None:
                        raise pdu.PduError("a command fragment where a data set was due")
                    command_bytes += value
                    if not control & pdu.LAST_BIT:
                        continue
                    command, command_context = parse_command(command_bytes), context_id
                    command_bytes = bytearray()
                    if command.has_data_set:
                        prefix = file_prefix(
                            command.affected_sop_class, command.affected_sop_instance, accepted[context_id], self.calling_ae
                        )
                        fragments, data_bytes = [], len(prefix)
                        continue
                    self._answer(command, command_context, None)
                    command = None
                else:
                    if command is None or context_id != command_context:
                        raise pdu.PduError("a data set fragment without its command")
                    data_bytes += len(value)
                    if data_bytes > MAX_DATA_SET_BYTES:
                        raise pdu.PduError(f"a data set larger than {MAX_DATA_SET_BYTES >> 20} MiB")
                    fragments.append(value)
                    if control & pdu.LAST_BIT:
                        received = ReceivedFile(accepted[context_id], prefix, tuple(fragments))
                        self._answer(command, command_context, received)
                        command, fragments = None, []

    def _answer(self, command: Command, context_id: int, received: ReceivedFile | None) -> None:
        if command.command_field == C_ECHO_RQ:
            status = Status.SUCCESS
        elif command.command_field == C_STORE_RQ and received is not None:
            status = self.store(received, command, self.calling_ae)
        else:
            logger.warning("association from %s: DIMSE command 0x%04x is not served", self.peer(), command.command_field)
            status = Status.UNRECOGNIZED_OPERATION
        self.connection.sendall(pdu.p_data(context_id, response(command, status)))
