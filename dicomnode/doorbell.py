"""How one stage of the node tells the next that work is waiting, so it starts now.

The stages poll the state directory (they can run as separate processes), and a poll interval
is latency: the worker polled every 0.5 s and the sender every second, which added up to over
a second between a series turning quiet and its results leaving. In the one-process node a
stage rings the next one's doorbell when it has handed work on; polling stays the fallback.
"""

from __future__ import annotations

import threading


class Doorbell:
    """Ends a stage's wait early when rung, or when the node stops."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._rung = threading.Event()

    def ring(self) -> None:
        self._rung.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a ring (none once the node stops: it rings every
        doorbell then); whether it rang."""
        rung = self._rung.is_set() or (not self._stop.is_set() and self._rung.wait(timeout))
        self._rung.clear()
        return rung
