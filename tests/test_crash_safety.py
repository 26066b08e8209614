"""SIGKILL at random points, round after round, while series keep arriving: nothing acknowledged
is lost, every result arrives, and a resend replaces rather than duplicates.

The node runs as operators run it (``dicomnode serve``, the real analysis); dcmtk storescu plays
the scanner, which resends what was not acknowledged after each crash, as scanners do; dcmtk
storescp is the destination. Each round sends a new series and kills the node in one of four
phases, cycled: while the series arrives (mid-association, mid-write), during the quiet period,
while a job runs (mid-inference) and while results go out (mid-send), each at a random moment
inside its phase. The test reads the node's state file (read-only) to find the phases and, at
the end, to check every promise against what the scanner was told and what storescp received.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pydicom

from conftest import free_port
from factories import PhantomSeries
from figures import record_figures, soak_factor
from peers import NODE_AET, STORESCU, NodeProcess, StoreSCP, storescu, wait_until

PHASES = ("receiving", "quiet", "inference", "sending")
QUIET_SECONDS = 2.0
SLICES = 30


class StateFile:
    """Read-only queries on a node's SQLite state (the node may be dead or alive meanwhile)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.sqlite3"

    def rows(self, sql: str, parameters: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        if not self.path.exists():
            return []
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        connection.row_factory = sqlite3.Row
        try:
            return connection.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []
        finally:
            connection.close()

    def count(self, sql: str, parameters: tuple[object, ...] = ()) -> int:
        rows = self.rows(sql, parameters)
        return rows[0][0] if rows else 0

    def phase(self, sender: subprocess.Popen[str]) -> str:
        """What the node is doing right now, as far as its state shows ("receiving+inference"
        when a series arrives while another one's job runs)."""
        doing = [
            name
            for name, busy in (
                ("receiving", sender.poll() is None),
                ("inference", self.count("SELECT COUNT(*) FROM jobs WHERE state = 'running'")),
                ("sending", self.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")),
            )
            if busy
        ]
        return "+".join(doing) or "quiet"

    def settled(self) -> bool:
        """No job left to run and nothing left to send."""
        busy = self.count("SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')")
        busy += self.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
        quiet_waiting = self.count("SELECT COUNT(*) FROM series WHERE pending = 1")
        return busy + quiet_waiting == 0


def acknowledged(storescu_output: str) -> set[str]:
    """The files storescu got a success status for (its -v log: "Sending file" then the response)."""
    current, stored = None, set()
    for line in storescu_output.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success" in line and current is not None:
            stored.add(current)
            current = None
    return stored


def start_sending(files: list[Path], port: int) -> subprocess.Popen[str]:
    command = [STORESCU, "-v", "-aec", NODE_AET, "-aet", "SCANNER", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_phase(
    phase: str, state: StateFile, sender: subprocess.Popen[str], series_uid: str, rng: random.Random
) -> None:
    """Return at a random moment inside ``phase`` (or as soon after it as the node allows)."""
    if phase == "receiving":
        stored = "SELECT COUNT(*) FROM instances WHERE series_uid = ?"
        wait_until(lambda: state.count(stored, (series_uid,)) or sender.poll() is not None, 60, 0.01, "a first slice")
        time.sleep(rng.uniform(0.0, 0.2))  # the 30 slices take about 0.3 s to arrive
        return
    sender.wait(timeout=120)
    if phase == "quiet":
        time.sleep(rng.uniform(0.0, QUIET_SECONDS * 0.8))
        return
    if phase == "inference":
        wait_until(lambda: "inference" in state.phase(sender), 120, 0.05, "a job to start")
        time.sleep(rng.uniform(0.0, 1.5))
        return
    wait_until(lambda: "sending" in state.phase(sender), 300, 0.05, "results to be queued")
    # Sending starts within the sender's one-second poll; stop at the first delivery, or at
    # a random moment before it.
    deadline = time.monotonic() + rng.uniform(0.0, 1.5)
    while time.monotonic() < deadline and not state.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'"):
        time.sleep(0.01)


def test_sigkill_at_random_points_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    rounds = len(PHASES) * soak_factor()
    port = free_port()
    destination = StoreSCP(tmp_path / "results", aet="RESULTS")
    state_dir = tmp_path / "state"
    state = StateFile(state_dir)

    def start() -> NodeProcess:
        return NodeProcess(state_dir, port, [f"RESULTS@127.0.0.1:{destination.port}"], quiet=QUIET_SECONDS)

    sent: dict[str, set[str]] = {}  # series UID -> SOP Instance UIDs the scanner got success for
    kills: Counter[str] = Counter()
    resent_instances = 0
    node = start()
    try:
        for round_number in range(rounds):
            series = PhantomSeries(slices=SLICES, seed=100 + round_number)
            files = series.write(tmp_path / f"series-{round_number}")
            uid_of = {str(f): pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
            sender = start_sending(files, port)
            wait_for_phase(PHASES[round_number % len(PHASES)], state, sender, series.series_uid, rng)
            kills[state.phase(sender)] += 1
            node.stop(signal.SIGKILL)
            assert node.popen.returncode == -signal.SIGKILL
            output, _ = sender.communicate(timeout=120)
            stored = acknowledged(output)
            node = start()
            missing = [f for f in files if str(f) not in stored]
            if missing:  # the scanner's retry of what it was not told was stored
                storescu(missing, NODE_AET, port, calling="SCANNER")
                resent_instances += len(missing)
            sent[series.series_uid] = set(uid_of.values())
        wait_until(state.settled, 600, 1.0, "every series analysed and every result sent")
        node_alive = node.alive()
    finally:
        node.stop()
        destination.stop()
    assert node_alive, node.output()[-3000:]

    jobs = state.rows("SELECT id, series_uid, state, instances, reason FROM jobs ORDER BY id")
    failed = [(job["id"], job["reason"]) for job in jobs if job["state"] == "failed"]
    assert not failed, failed
    for series_uid, instances in sent.items():
        done = [job for job in jobs if job["series_uid"] == series_uid and job["state"] == "done"]
        assert done, f"series {series_uid} was never analysed"
        covered = set(json.loads(done[-1]["instances"]))
        assert covered == instances, f"the last run of {series_uid} misses {len(instances - covered)} instance(s)"

    deliveries = state.rows("SELECT job_id, sop_instance_uid, state FROM outbox")
    assert deliveries and {row["state"] for row in deliveries} == {"sent"}
    queued = {row["sop_instance_uid"] for row in deliveries}
    received = [pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in destination.files()]
    assert set(received) == queued  # every result arrived, and no result under another UID
    done_series = {job["series_uid"] for job in jobs if job["state"] == "done"}
    assert done_series >= set(sent)
    record_figures(
        "crash_safety",
        rounds=rounds,
        kills_by_phase=dict(kills),
        series=len(sent),
        instances_acknowledged=sum(len(v) for v in sent.values()),
        instances_resent_by_the_scanner=resent_instances,
        runs=Counter(job["state"] for job in jobs),
        results_queued=len(queued),
        results_received=len(set(received)),
    )
