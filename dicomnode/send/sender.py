"""The sender loop: works through the outbox, one association per destination per round.

Each round takes every due delivery, groups it by destination and hands each group to its
transport (DICOM C-STORE or folder copy). Outcomes are recorded one file at a time as they
arrive. One destination failing, even with a bug, never stops the others.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dicomnode.doorbell import Doorbell
from dicomnode.send.folder import copy_files
from dicomnode.send.outbox import Outbox, OutboxItem
from dicomnode.send.outcome import DestinationUnavailable, OutcomeCallback, SendOutcome
from dicomnode.send.scu import send_files
from dicomnode.settings import DicomDestination, Destination, FolderDestination, Settings

logger = logging.getLogger(__name__)


def _when(timestamp: float) -> str:
    """A local time for log lines (a retry time an operator can read)."""
    return datetime.datetime.fromtimestamp(timestamp).isoformat(timespec="seconds")


class Sender:
    """Delivers the outbox to the configured destinations, with retries and backoff."""

    def __init__(self, outbox: Outbox, settings: Settings) -> None:
        self.outbox = outbox
        self.destinations = {destination.name: destination for destination in settings.destinations}
        self.calling_ae_title = settings.node.ae_title
        self.timeout = settings.node.network_timeout_seconds

    def run_once(self, now: float | None = None) -> int:
        """Attempt every due delivery; return the number of files delivered.

        ``now`` fixes the clock for the whole round (tests); by default the real time is read
        at each record so that a long batch stamps its files when they were sent.
        """
        clock: Callable[[], float] = (lambda: now) if now is not None else time.time
        sent = 0
        for name, items in self.outbox.due(clock()).items():
            try:
                sent += self._deliver(self.destinations[name], items, clock)
            except Exception:
                # A bug in one transport must not stop the others; the rows stay pending.
                logger.exception("unexpected error while sending to %s", name)
        return sent

    def run_forever(self, stop: threading.Event, poll_seconds: float = 1.0, ready: Doorbell | None = None) -> None:
        """Run rounds until ``stop`` is set, each after ``poll_seconds`` or when ``ready`` is rung
        (by the worker, with new results); removes finished jobs' files left by a crash first."""
        wait = ready.wait if ready is not None else stop.wait
        try:
            self.outbox.cleanup()
        except OSError:
            logger.exception("could not clean the outbox directory at start-up")
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                logger.exception("sender round failed; trying again in %.1f s", poll_seconds)
            wait(poll_seconds)

    def _deliver(self, destination: Destination, items: Sequence[OutboxItem], clock: Callable[[], float]) -> int:
        """Send one destination's due items over one association (or one folder pass)."""
        waiting: dict[Path, OutboxItem] = {item.path: item for item in items}
        finished_jobs: set[int] = set()
        sent = 0

        def record(outcome: SendOutcome) -> None:
            nonlocal sent
            item = waiting.pop(outcome.path)
            if outcome.delivered:
                self.outbox.mark_sent(item, clock())
                sent += 1
                finished_jobs.add(item.job_id)
                return
            next_attempt_at = self.outbox.record_refusal(item, outcome.reason, clock())
            if next_attempt_at is None:
                finished_jobs.add(item.job_id)
            else:
                logger.warning(
                    "%s refused %s (job %d): %s; next attempt at %s",
                    destination.name,
                    item.sop_instance_uid,
                    item.job_id,
                    outcome.reason,
                    _when(next_attempt_at),
                )

        try:
            self._transfer(destination, list(waiting), record)
        except DestinationUnavailable as error:
            self._postpone(destination, list(waiting.values()), error.reason, clock())
        except Exception as error:
            self._postpone(destination, list(waiting.values()), f"unexpected error: {error!r}", clock())
            raise
        finally:
            if sent:
                logger.info("sent %d objects to %s", sent, destination.name)
        if finished_jobs:
            self.outbox.cleanup(sorted(finished_jobs))
        return sent

    def _transfer(self, destination: Destination, paths: list[Path], record: OutcomeCallback) -> None:
        if isinstance(destination, DicomDestination):
            send_files(destination, self.calling_ae_title, paths, self.timeout, on_outcome=record)
        elif isinstance(destination, FolderDestination):
            copy_files(destination, paths, on_outcome=record)
        else:
            raise TypeError(f"unknown destination type {type(destination).__name__}")

    def _postpone(self, destination: Destination, items: list[OutboxItem], reason: str, now: float) -> None:
        """Back off the items a destination did not take because it was unavailable."""
        next_attempt_at = self.outbox.record_unavailable(items, reason, now)
        if next_attempt_at is None:
            return
        logger.warning(
            "destination %s unavailable (%s); %d objects stay queued, next attempt at %s",
            destination.name,
            reason,
            len(items),
            _when(next_attempt_at),
        )
