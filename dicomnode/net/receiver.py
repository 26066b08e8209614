"""What happens to one received instance: check the minimum, write it durably, have it filed.

This is the C-STORE handler's whole job. It never decodes pixels, never runs analysis and
never raises: every outcome is a DIMSE status and a log line.

The instance's bytes go to disk while its attributes are read: the connection's thread makes
the durable write (one system call, the interpreter lock released), and a helper thread parses
meanwhile. The other way round would stall: a thread handed the write would wait for the lock
the parsing thread holds. Success is answered as soon as both are done: the staged file is
durable by itself (:mod:`dicomnode.spool.staging`), and the filer
(:mod:`dicomnode.spool.filing`) moves it into the spool and the index while the peer sends its
next instance. What a stopped node staged and did not file, the next start files
(:meth:`StoreReceiver.recover`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomnode.net.elements import UNDEFINED_LENGTH, read_elements
from dicomnode.spool import HeaderError, InstanceHeader, InstanceIndex, OutOfSpace, Spool, read_header
from dicomnode.spool.filing import Filer
from dicomnode.spool.header import HEADER_KEYWORDS
from dicomnode.spool.staging import StagedFile
from dicomnode.status import Status

logger = logging.getLogger(__name__)


#: What :func:`pixel_data_problem` reads besides Pixel Data.
PIXEL_DESCRIPTION_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "NumberOfFrames", "BitsAllocated")

#: The attributes the receiver reads of an instance (its header and its pixel description).
#: Only these are parsed: a full parse of a scanner's slice (100-300 attributes) cost more
#: than its durable write. The rest is kept as it was sent, for the volume builder to read.
FILED_TAGS = frozenset(tag_for_keyword(keyword) for keyword in (*HEADER_KEYWORDS, *PIXEL_DESCRIPTION_KEYWORDS, "PixelData"))


def parse_filed_attributes(encoded: bytes) -> Dataset:
    """The attributes the receiver reads, parsed and converted (a damaged value raises here)."""
    return read_elements(encoded, FILED_TAGS)


def pixel_data_length(dataset: Dataset) -> int:
    """The length of Pixel Data's value, without reading a value that was deferred."""
    element = dataset.get_item("PixelData", keep_deferred=True)
    if isinstance(element, RawDataElement):
        return 0 if element.length == UNDEFINED_LENGTH else element.length
    return len(element.value or b"")  # an empty element's value is None


def pixel_data_problem(dataset: Dataset) -> str | None:
    """Why an image's pixel data cannot be right, judged from lengths alone (no decoding).

    The data set may hold Pixel Data deferred (read with ``defer_size``): its length is
    known without its value."""
    if "PixelData" not in dataset:
        return "the image has no Pixel Data"
    transfer_syntax = UID(dataset.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    if transfer_syntax.is_compressed:
        return None  # encapsulated: only decoding can tell; the volume builder does that
    try:
        expected = (
            int(dataset.Rows)
            * int(dataset.Columns)
            * int(dataset.get("SamplesPerPixel", 1))
            * int(dataset.get("NumberOfFrames", 1) or 1)
            * int(dataset.BitsAllocated)
            // 8
        )
    except (AttributeError, TypeError, ValueError, OverflowError) as error:
        return f"the image pixel description is incomplete: {error}"
    actual = pixel_data_length(dataset)
    if actual < expected:
        return f"Pixel Data is truncated: {actual} bytes where Rows x Columns x frames needs {expected}"
    return None


@dataclass(frozen=True)
class Examined:
    """What the receiver needs to know of an instance before it files it."""

    header: InstanceHeader
    #: Why its pixel data cannot be right (None: nothing wrong seen).
    pixel_problem: str | None


def examine(encoded: bytes) -> Examined:
    """Parse the filed attributes and check them; raises for a data set that cannot be filed
    (:class:`HeaderError`, or any error of decoding the peer's bytes)."""
    dataset = parse_filed_attributes(encoded)
    return Examined(read_header(dataset), pixel_data_problem(dataset))


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

    def receive(self, encoded: bytes, calling_ae: str) -> Status:
        """Store one instance (``encoded`` is the whole DICOM file) and return the status to answer.

        Success is answered once the instance is durable, staged under a temporary name; the
        filer then moves it into the spool and the index (:meth:`settle` waits for that)."""
        try:
            self.spool.ensure_room(len(encoded))
        except OutOfSpace as error:
            logger.error("refused an instance from %s: out of space (%s)", calling_ae, error)
            return Status.OUT_OF_RESOURCES
        examining = self._examiners.submit(examine, encoded)
        staged = self.spool.stage(encoded)  # the examiner runs meanwhile
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
                examined = examine(staged.path.read_bytes())
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
