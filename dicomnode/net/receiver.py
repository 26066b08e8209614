"""What happens to one received instance: check the minimum, write it durably, have it filed.

This is the C-STORE handler's whole job. It never decodes pixels, never runs analysis and never
raises: every outcome is a DIMSE status and a log line.

The instance's bytes go to disk while its attributes are read: the connection's thread makes
the durable write (one system call for the file's prefix and the data set's fragments as they
arrived, the interpreter lock released), and a helper thread reads the attributes meanwhile
(:mod:`dicomnode.net.elements`, :mod:`dicomnode.net.attributes`). The other way round would
stall: a thread handed the write would wait for the lock the parsing thread holds. Success is
answered as soon as both are done: the staged file is durable by itself
(:mod:`dicomnode.spool.staging`), and the filer (:mod:`dicomnode.spool.filing`) moves it into
the spool and the index while the peer sends its next instance. What a stopped node staged and
did not file, the next start files (:meth:`StoreReceiver.recover`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pydicom.uid import UID, ImplicitVRLittleEndian

from dicomnode.net.attributes import WANTED_TAGS, FiledAttributes
from dicomnode.net.elements import PIXEL_DATA, UNDEFINED_LENGTH, read_elements
from dicomnode.net.part10 import ReceivedFile
from dicomnode.spool import HeaderError, InstanceHeader, InstanceIndex, OutOfSpace, Spool, read_header
from dicomnode.spool.filing import Filer
from dicomnode.spool.header import Attributes
from dicomnode.spool.staging import StagedFile
from dicomnode.status import Status

logger = logging.getLogger(__name__)

#: What the walk hands over: the filed attributes, their character set, and Pixel Data (its length).
WALKED_TAGS = WANTED_TAGS | {PIXEL_DATA}


def pixel_data_problem(attributes: Attributes, transfer_syntax: str, pixel_data_length: int | None) -> str | None:
    """Why an image's pixel data cannot be right, judged from lengths alone (no decoding).

    ``pixel_data_length`` is the length of Pixel Data's value (None: there is none); the pixel
    description is read from ``attributes``
    (:data:`dicomnode.net.attributes.PIXEL_DESCRIPTION_KEYWORDS`)."""
    if pixel_data_length is None:
        return "the image has no Pixel Data"
    if UID(transfer_syntax or ImplicitVRLittleEndian).is_compressed:
        return None  # encapsulated: only decoding can tell; the volume builder does that
    missing = [keyword for keyword in ("Rows", "Columns", "BitsAllocated") if attributes.get(keyword) is None]
    if missing:
        return f"the image pixel description is incomplete: {' and '.join(missing)} missing"
    try:
        expected = (
            int(attributes.get("Rows"))
            * int(attributes.get("Columns"))
            * int(attributes.get("SamplesPerPixel", 1))
            * int(attributes.get("NumberOfFrames", 1) or 1)
            * int(attributes.get("BitsAllocated"))
            // 8
        )
    except (TypeError, ValueError, OverflowError) as error:
        return f"the image pixel description is incomplete: {error}"
    if pixel_data_length < expected:
        return f"Pixel Data is truncated: {pixel_data_length} bytes where Rows x Columns x frames needs {expected}"
    return None


@dataclass(frozen=True)
class Examined:
    """What the receiver needs to know of an instance before it files it."""

    header: InstanceHeader
    #: Why its pixel data cannot be right (None: nothing wrong seen).
    pixel_problem: str | None


def examine(received: ReceivedFile) -> Examined:
    """Read the filed attributes and check them; raises for a data set that cannot be filed
    (:class:`HeaderError`, or any error of decoding the peer's bytes)."""
    elements = read_elements(received.data_set(), received.transfer_syntax, WALKED_TAGS)
    attributes = FiledAttributes(elements)
    pixel_data = elements.get(PIXEL_DATA)
    pixel_data_length = None if pixel_data is None else 0 if pixel_data.length == UNDEFINED_LENGTH else pixel_data.length
    return Examined(read_header(attributes), pixel_data_problem(attributes, received.transfer_syntax, pixel_data_length))


class StoreReceiver:
    """Answers received instances, and hands those it keeps to the filer."""

    def __init__(
        self,
        spool: Spool,
        index: InstanceIndex,
        keep_sop_classes: tuple[str, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.keep_sop_classes = frozenset(keep_sop_classes)
        self.clock = clock
        self._examiners = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="examine")
        self._filer = Filer(spool, index)

    def receive(self, received: ReceivedFile, calling_ae: str) -> Status:
        """Store one instance and return the status to answer.

        Success is answered once the instance is durable, staged under a temporary name; the
        filer then moves it into the spool and the index (:meth:`settle` waits for that)."""
        try:
            self.spool.ensure_room(received.size)
        except OutOfSpace as error:
            logger.error("refused an instance from %s: out of space (%s)", calling_ae, error)
            return Status.OUT_OF_RESOURCES
        examining = self._examiners.submit(examine, received)
        staged = self.spool.stage(received.parts())  # the examiner runs meanwhile
        try:
            examined = examining.result()
        except HeaderError as error:
            logger.warning("refused an instance from %s: %s", calling_ae, error)
        except Exception as error:  # any decoding failure of a peer's bytes is "cannot understand"
            logger.warning("refused an undecodable dataset from %s: %s", calling_ae, error)
        else:
            return self._accept(staged, examined, calling_ae)
        self.spool.done(staged)
        return Status.CANNOT_UNDERSTAND

    def recover(self) -> int:
        """File the instances an earlier process staged and did not file (it may have
        acknowledged them): each is examined again and filed by the same rules, so one that was
        refused, or cut short by the stop and never acknowledged, is removed. Returns how many
        staged files there were."""
        leftovers = self.spool.staged_leftovers()
        for staged in leftovers:
            assert staged.path is not None
            try:
                examined = examine(ReceivedFile.from_file(staged.path.read_bytes()))
            except Exception as error:
                logger.warning("removed %s, staged by an earlier process: not an instance (%s)", staged.path.name, error)
                self.spool.done(staged)
                continue
            self._accept(staged, examined, calling_ae="")
        self.settle()
        return len(leftovers)

    def settle(self) -> None:
        """Wait until every instance acknowledged so far is in the spool and the index."""
        self._filer.settle()

    def close(self) -> None:
        """Stop the examining threads and file what was acknowledged (after the server has
        stopped calling :meth:`receive`)."""
        self._examiners.shutdown()
        self._filer.close()

    def _accept(self, staged: StagedFile, examined: Examined, calling_ae: str) -> Status:
        """Hand a staged, examined instance to the filer (success), or drop or refuse it."""
        header = examined.header
        failure = self.spool.staging_failure(staged)
        if header.sop_class_uid not in self.keep_sop_classes:
            logger.info(
                "acknowledged and dropped %s %s from %s (SOP class not kept)",
                UID(header.sop_class_uid).name,
                header.sop_instance_uid,
                calling_ae,
            )
            status = Status.SUCCESS
        elif examined.pixel_problem is not None:
            logger.warning("refused instance %s from %s: %s", header.sop_instance_uid, calling_ae, examined.pixel_problem)
            status = Status.CANNOT_UNDERSTAND
        elif isinstance(failure, OutOfSpace):
            logger.error("refused instance %s: out of space (%s)", header.sop_instance_uid, failure)
            status = Status.OUT_OF_RESOURCES
        elif failure is not None:
            logger.error("refused instance %s: the spool could not be written (%s)", header.sop_instance_uid, failure)
            status = Status.OUT_OF_RESOURCES
        else:
            self._filer.submit(staged, header, calling_ae, self.clock())
            return Status.SUCCESS
        self.spool.done(staged)
        return status
