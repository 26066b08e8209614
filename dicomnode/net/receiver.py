"""What happens to one received instance: check the minimum, write it durably, index it.

This is the C-STORE handler's whole job. It never decodes pixels, never runs analysis and
never raises: every outcome is a DIMSE status and a log line.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomnode.fileio import out_of_space
from dicomnode.spool import HeaderError, InstanceIndex, OutOfSpace, Spool, read_header
from dicomnode.status import Status

logger = logging.getLogger(__name__)

#: The length field of an element whose value's end is marked by a delimiter (encapsulated pixels).
UNDEFINED_LENGTH = 0xFFFFFFFF


#: What :func:`pixel_data_problem` reads besides Pixel Data.
PIXEL_DESCRIPTION_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "NumberOfFrames", "BitsAllocated")


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


class StoreReceiver:
    """Files received instances into the spool and the index."""

    def __init__(
        self,
        spool: Spool,
        index: InstanceIndex,
        keep_sop_classes: tuple[str, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.index = index
        self.keep_sop_classes = frozenset(keep_sop_classes)
        self.clock = clock

    def store(self, encoded: bytes, dataset: Dataset, calling_ae: str) -> Status:
        """Store one instance (``encoded`` is the whole DICOM file) and return the status to answer."""
        try:
            header = read_header(dataset)
        except HeaderError as error:
            logger.warning("refused an instance from %s: %s", calling_ae, error)
            return Status.CANNOT_UNDERSTAND
        if header.sop_class_uid not in self.keep_sop_classes:
            logger.info(
                "acknowledged and dropped %s %s from %s (SOP class not kept)",
                UID(header.sop_class_uid).name,
                header.sop_instance_uid,
                calling_ae,
            )
            return Status.SUCCESS
        problem = pixel_data_problem(dataset)
        if problem is not None:
            logger.warning("refused instance %s from %s: %s", header.sop_instance_uid, calling_ae, problem)
            return Status.CANNOT_UNDERSTAND
        now = self.clock()
        if self.index.contains(header.sop_instance_uid):
            self.index.touch(header, now)
            logger.debug("instance %s received again; stored once", header.sop_instance_uid)
            return Status.SUCCESS
        try:
            relative, size = self.spool.write(header, encoded)
        except OutOfSpace as error:
            logger.error("refused instance %s: out of space (%s)", header.sop_instance_uid, error)
            return Status.OUT_OF_RESOURCES
        except OSError:
            logger.exception("refused instance %s: the spool could not be written", header.sop_instance_uid)
            return Status.OUT_OF_RESOURCES
        try:
            self.index.record(header, relative, size, calling_ae, now)
        except sqlite3.Error as error:
            if out_of_space(error) is not None:
                logger.error("refused instance %s: out of space for the index (%s)", header.sop_instance_uid, error)
            else:
                logger.exception("refused instance %s: the index could not be written", header.sop_instance_uid)
            self.spool.remove(relative)
            return Status.OUT_OF_RESOURCES
        return Status.SUCCESS
