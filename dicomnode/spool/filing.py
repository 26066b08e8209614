"""Acknowledged instances moved into the spool and the index, on a thread of their own.

The receiver answers success once an instance is staged: its bytes and its temporary name are
on disk (:mod:`dicomnode.spool.staging`). Moving it to ``spool/<study>/<series>/`` (a rename,
:meth:`Spool.keep` says why without a directory fsync) and writing its index row take
0.24-0.29 ms; done here, they run while the connection reads the peer's next instance instead
of before each answer. Done on the connection's own thread after its answer, they still delayed
the next instance: the peer streams into socket buffers that only that thread empties.

One thread, in the order the instances were acknowledged (on every association): a resend of
an instance finds its first copy's row, and a series' rows arrive in order. Nothing here
raises: a failure is logged, and the file stays where the next start-up finds it (a staged
file is filed again, a spool file without a row is re-indexed).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from dicomnode.spool.header import InstanceHeader
from dicomnode.spool.index import InstanceIndex
from dicomnode.spool.staging import StagedFile
from dicomnode.spool.store import Spool

logger = logging.getLogger(__name__)


class Filer:
    """Files staged instances into the spool and the index, one at a time, in order."""

    def __init__(self, spool: Spool, index: InstanceIndex) -> None:
        self.spool = spool
        self.index = index
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="filing")

    def submit(self, staged: StagedFile, header: InstanceHeader, calling_ae: str, received_at: float) -> None:
        """File ``staged`` after the instances submitted before it; the Filer owns it from now."""
        self._thread.submit(self.file, staged, header, calling_ae, received_at)

    def settle(self) -> None:
        """Wait until every instance submitted so far is filed."""
        self._thread.submit(lambda: None).result()

    def close(self) -> None:
        """File what was submitted, then stop the thread."""
        self._thread.shutdown(wait=True)

    def file(self, staged: StagedFile, header: InstanceHeader, calling_ae: str, received_at: float) -> None:
        """Keep and index one staged instance now (a known one only gives its series news), and
        let the spool remove what is left of it. Never raises."""
        try:
            self._file(staged, header, calling_ae, received_at)
        finally:
            self.spool.done(staged)

    def _file(self, staged: StagedFile, header: InstanceHeader, calling_ae: str, received_at: float) -> None:
        uid, staged_as = header.sop_instance_uid, staged.path
        try:
            if self.index.contains(uid):
                self.index.touch(header, received_at)  # a resend asks for a new run
                logger.debug("instance %s received again; stored once", uid)
                return  # the spool removes the second copy
            relative, size = self.spool.keep(staged, header)
        except Exception as error:  # OSError, sqlite3's errors: acknowledged, so the file stays
            logger.error(
                "instance %s was acknowledged but could not be filed (%s); it stays as %s and is filed"
                " when the node next starts",
                uid, error, staged_as,
            )
            staged.path = None  # not the spool's to remove
            return
        try:
            self.index.record(header, relative, size, calling_ae, received_at)
        except Exception as error:  # sqlite3's errors, or the database of a stopping node closed
            logger.error(
                "instance %s is in the spool as %s but could not be indexed (%s); it is indexed when the node next starts",
                uid, relative, error,
            )
