"""The worker: a job's instances -> volume -> ``inference.analyze`` -> SEG, SR, key images -> outbox.

A scan the analysis cannot assess (no lungs, lungs cut off) is a result, not a failure: its SR
says so with the reason (without a SEG when there is no lung to show), and the job is done.

Bad input (a volume that cannot be built, findings that cannot be encoded) fails the job at
once with its reason: retrying cannot make it right. Anything else (a bug, memory) is retried
a bounded number of times, then the job is failed with its error. Either way the node goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dicomnode.db import Database
from dicomnode.doorbell import Doorbell
from dicomnode.encode import EncodingError
from dicomnode.fileio import out_of_space
from dicomnode.jobs.prefetch import Prefetcher
from dicomnode.jobs.queue import Job, JobQueue
from dicomnode.pipeline import Analyze, analyse_series
from dicomnode.send import Outbox
from dicomnode.settings import Settings
from dicomnode.spool import InstanceIndex, Spool
from dicomnode.volume import VolumeError

logger = logging.getLogger(__name__)


class Worker:
    """Runs jobs one at a time."""

    def __init__(
        self,
        db: Database,
        queue: JobQueue,
        index: InstanceIndex,
        spool: Spool,
        outbox: Outbox,
        settings: Settings,
        analyze: Analyze,
        prefetcher: Prefetcher | None = None,
    ) -> None:
        """``prefetcher`` reads series ahead while the worker has no job (none: every job reads its files itself)."""
        self.db = db
        self.queue = queue
        self.index = index
        self.spool = spool
        self.outbox = outbox
        self.settings = settings
        self.analyze = analyze
        self.prefetcher = prefetcher

    def run_once(self, now: float | None = None) -> Job | None:
        """Run the next due job, if any; return it (as claimed)."""
        job = self.queue.claim(time.time() if now is None else now)
        if job is None:
            return None
        started = time.monotonic()
        try:
            summary = self._process(job)
        except (VolumeError, EncodingError) as error:
            self._fail(job, f"{type(error).__name__}: {error}", retry=False)
        except Exception as error:
            full = out_of_space(error)
            if full is not None:
                self._postpone(job, f"out of space: {full}")
            else:
                logger.exception("job %d (series %s) raised", job.id, job.series_uid)
                self._fail(job, f"{type(error).__name__}: {error}", retry=True)
        else:
            logger.info(
                "job %d done in %.1f s: series %s, %s", job.id, time.monotonic() - started, job.series_uid, summary
            )
        return job

    def _process(self, job: Job) -> dict[str, Any]:
        instances = self.index.instances_by_uid(list(job.instances))
        if len(instances) < len(job.instances):
            raise VolumeError(f"{len(job.instances) - len(instances)} instance(s) of this run are no longer in the spool")
        paths = [self.spool.absolute(i.path) for i in instances]
        decoded = self.prefetcher.take(paths) if self.prefetcher is not None else None
        result = analyse_series(paths, self.settings, self.analyze, decoded)
        files = self.outbox.store(job.id, result.objects)
        with self.db.transaction() as sql:
            self.queue.mark_done(sql, job, result.summary, time.time(), self.settings.storage.retention_seconds)
            self.outbox.enqueue(sql, job.id, files)
        return result.summary

    def _postpone(self, job: Job, reason: str) -> None:
        """A full disk is no fault of the series: wait for space without using up its attempts."""
        delay = self.settings.jobs.retry_delay_seconds
        self.queue.postpone(job, reason, time.time() + delay)
        logger.warning("job %d (series %s) postponed by %.0f s: %s", job.id, job.series_uid, delay, reason)

    def _fail(self, job: Job, error: str, *, retry: bool) -> None:
        state = self.queue.mark_failed(
            job,
            error,
            time.time(),
            retry=retry,
            max_attempts=self.settings.jobs.max_attempts,
            retry_delay=self.settings.jobs.retry_delay_seconds,
            retention_seconds=self.settings.storage.retention_seconds,
        )
        if state == "failed":
            logger.error("job %d (series %s) failed after %d attempt(s): %s", job.id, job.series_uid, job.attempts, error)
        else:
            logger.warning("job %d (series %s) attempt %d failed, will retry: %s", job.id, job.series_uid, job.attempts, error)

    def run_forever(
        self,
        stop: threading.Event,
        poll_seconds: float = 0.5,
        queued: Doorbell | None = None,
        delivered: Doorbell | None = None,
    ) -> None:
        """Run jobs until ``stop``: with none, read series ahead, else wait on ``queued`` (rung by
        the assembler); ring ``delivered`` (the sender's doorbell) when a job put results in the outbox."""
        wait = queued.wait if queued is not None else stop.wait
        while not stop.is_set():
            idle = poll_seconds
            try:
                job = self.run_once()
                if job is None and self.prefetcher is not None:
                    idle = min(idle, self.prefetcher.step(time.time()))
            except Exception:
                logger.exception("worker round failed; retrying")
                job = None
            if job is not None:
                if delivered is not None:
                    delivered.ring()
            elif idle > 0:
                wait(idle)
