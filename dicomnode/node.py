"""The embedded node: receiver, assembler, worker and sender in one process.

Each stage shares nothing but the state directory (spool, outbox, SQLite), so the same stages
can run as separate processes; here they are threads around one receiving server.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from dicomnode.assembly import Assembler
from dicomnode.db import Database
from dicomnode.doorbell import Doorbell
from dicomnode.jobs import JobQueue
from dicomnode.jobs.prefetch import Prefetcher
from dicomnode.jobs.worker import Worker
from dicomnode.layout import StateLayout
from dicomnode.net.receiver import StoreReceiver
from dicomnode.net.scp import start_receiver
from dicomnode.pipeline import Analyze, build_analyze
from dicomnode.send import Outbox, Sender
from dicomnode.settings import Settings
from dicomnode.spool import InstanceIndex, Spool

logger = logging.getLogger(__name__)


@dataclass
class State:
    """The node's on-disk state, opened."""

    layout: StateLayout
    db: Database
    spool: Spool
    index: InstanceIndex
    queue: JobQueue
    outbox: Outbox

    @classmethod
    def open(cls, settings: Settings) -> "State":
        layout = StateLayout(settings.storage.state_dir)
        layout.create()
        db = Database(layout.database)
        return cls(
            layout=layout,
            db=db,
            spool=Spool(layout, settings.storage.min_free_bytes),
            index=InstanceIndex(db),
            queue=JobQueue(db),
            outbox=Outbox(db, layout, settings),
        )


class Node:
    """Start and stop the whole pipeline."""

    def __init__(self, settings: Settings, analyze: Analyze | None = None) -> None:
        """``analyze`` replaces the configured analysis (tests inject a stub); by default one
        analyzer is built from ``settings.analysis`` here, before anything is received, so that
        missing or corrupt weights stop the node at start-up rather than fail every series."""
        self.settings = settings
        self.state = State.open(settings)
        self.analyze = analyze if analyze is not None else build_analyze(settings)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self._receiver: StoreReceiver | None = None
        self._doorbells: list[Doorbell] = []

    def recover(self, receiver: StoreReceiver) -> None:
        """Carry on after a crash: drop temp files, file what was staged, re-index orphans,
        resume interrupted jobs."""
        state = self.state
        removed = state.spool.clear_temporaries()
        if removed:
            logger.warning("removed %d temporary file(s) left by an earlier process", removed)
        staged = receiver.recover()
        if staged:
            logger.warning("examined again %d instance(s) staged by an earlier process, and filed those the node keeps", staged)
        state.index.reindex_orphans(state.spool, time.time())
        state.queue.resume_interrupted()

    def start(self) -> None:
        state, settings = self.state, self.settings
        self._receiver = StoreReceiver(state.spool, state.index, settings.storage.keep_sop_classes)
        self.recover(self._receiver)
        queued, delivered = Doorbell(self._stop), Doorbell(self._stop)
        self._doorbells = [queued, delivered]
        assembler = Assembler(state.index, state.spool, state.queue, settings)
        prefetcher = Prefetcher(state.index, state.spool)
        worker = Worker(state.db, state.queue, state.index, state.spool, state.outbox, settings, self.analyze, prefetcher)
        stages = {
            "assembler": (assembler.run_forever, {"submitted": queued}),
            "worker": (worker.run_forever, {"queued": queued, "delivered": delivered}),
            "sender": (Sender(state.outbox, settings).run_forever, {"ready": delivered}),
        }
        for name, (loop, doorbells) in stages.items():
            thread = threading.Thread(target=loop, args=(self._stop,), kwargs=doorbells, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._server = start_receiver(settings.node, self._receiver)
        destinations = ", ".join(d.name for d in settings.destinations) or "none"
        logger.info("node started: state in %s, destinations: %s", state.layout.root, destinations)

    def stop(self) -> None:
        """Stop accepting, let the stages finish their current step, close the state."""
        if self._server is not None:
            self._server.shutdown()
        if self._receiver is not None:
            self._receiver.close()
        self._stop.set()
        for doorbell in self._doorbells:
            doorbell.ring()
        for thread in self._threads:
            thread.join(timeout=60)
        self.state.spool.close()
        self.state.db.close()
        logger.info("node stopped")

    def wait(self) -> None:
        """Block until :meth:`request_stop` is called (from a signal handler)."""
        while not self._stop.wait(1.0):
            pass

    def request_stop(self) -> None:
        self._stop.set()
