"""The assembler: turns quiet series into jobs or logged rejections, and cleans up old files.

Completion is a quiet timer: association release is only a hint (a study may arrive over
several associations, and interleaved with others), so a series is complete when nothing new
arrived for ``quiet_seconds``. Instances that arrive after a run start a new run.
"""

from __future__ import annotations

import logging
import threading
import time

from dicomnode.assembly.rules import first_failure
from dicomnode.doorbell import Doorbell
from dicomnode.jobs.queue import JobQueue
from dicomnode.settings import Settings
from dicomnode.spool import InstanceIndex, Spool

logger = logging.getLogger(__name__)


class Assembler:
    """Polls the index for quiet series and submits them."""

    def __init__(self, index: InstanceIndex, spool: Spool, queue: JobQueue, settings: Settings) -> None:
        self.index = index
        self.spool = spool
        self.queue = queue
        self.settings = settings

    def run_once(self, now: float | None = None) -> int:
        """Submit every quiet series, remove expired ones; return how many runs were submitted."""
        now = time.time() if now is None else now
        submitted = 0
        for series in self.index.quiet_series(now - self.settings.assembly.quiet_seconds):
            instances = self.index.instances(series.series_uid)
            reason = first_failure([i.header for i in instances], self.settings.assembly)
            uids = [i.header.sop_instance_uid for i in instances]
            job_id = self.queue.submit(series, uids, reason, now, self.settings.storage.retention_seconds)
            if job_id is None:
                continue  # news arrived meanwhile; the series will be quiet again later
            submitted += 1
            if reason:
                logger.warning("series %s (%d instances) not analysed: %s", series.series_uid, len(uids), reason)
            else:
                logger.info("series %s complete with %d instances: job %d queued", series.series_uid, len(uids), job_id)
        for series_uid in self.index.expired_series(now):
            removed = self.index.forget_series(self.spool, series_uid)
            logger.info("retention over for series %s: removed %d spool files", series_uid, removed)
        return submitted

    def run_forever(self, stop: threading.Event, poll_seconds: float = 1.0, submitted: Doorbell | None = None) -> None:
        """Run rounds until ``stop``; ring ``submitted`` (the worker's doorbell) when a round queued a job.

        Between rounds it waits until the earliest pending series can turn quiet (at most
        ``poll_seconds``): a series is then submitted when its quiet period ends, not up to a
        poll interval later.
        """
        while not stop.is_set():
            try:
                if self.run_once() and submitted is not None:
                    submitted.ring()
                wait = self._seconds_until_next_quiet(poll_seconds)
            except Exception:
                logger.exception("assembler round failed; retrying")
                wait = poll_seconds
            stop.wait(wait)

    def _seconds_until_next_quiet(self, longest: float) -> float:
        earliest = self.index.earliest_pending_arrival()
        if earliest is None:
            return longest
        due = earliest + self.settings.assembly.quiet_seconds - time.time()
        return min(longest, max(_SHORTEST_WAIT_SECONDS, due))


#: The assembler never queries the index more often than this.
_SHORTEST_WAIT_SECONDS = 0.05
