"""Load: many scanners at once, as a busy site sends, against the node as operators run it.

Eight dcmtk storescu processes, each its own scanner (calling AE title) on its own association,
send their series at the same moment, while a ninth sender opens one association per instance
(as some modalities and routers do). Every instance must be acknowledged, every series analysed
once with every instance it was sent, and every result delivered; the figures (receive
throughput, time to all results, the node's peak memory) are recorded, not asserted.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest

from conftest import free_port
from factories import PhantomSeries
from figures import record_figures, soak_factor
from peers import KEY_IMAGES, NODE_AET, NodeProcess, StoreSCP, results_by_series, storescu, wait_until

#: Scanners sending over one association each; with the per-instance sender that is 9 at a
#: time, within the node's default ``max_associations`` of 10.
SCANNERS = 8
#: The shipped default (config/dicomnode.toml): the per-instance sender's gaps between
#: associations stay well inside it even on a loaded two-core machine.
QUIET_SECONDS = 10.0
SUCCESS = "Received Store Response (Success)"


def send_in_one_association(files: list[Path], port: int, calling: str) -> tuple[int, float]:
    """One storescu run for all ``files``: the number of successful stores and when it ended."""
    result = storescu(files, NODE_AET, port, calling=calling)
    return result.stderr.count(SUCCESS), time.monotonic()


def send_per_instance(files: list[Path], port: int, calling: str) -> tuple[int, float]:
    """One storescu run (one association) per file: successful stores and when the last ended."""
    stored = sum(storescu(path, NODE_AET, port, calling=calling).stderr.count(SUCCESS) for path in files)
    return stored, time.monotonic()


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and every process below it, in MiB."""
    total_kib = 0
    for process in [pid, *_descendants(pid)]:
        status = Path(f"/proc/{process}/status").read_text()
        total_kib += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    return total_kib / 1024


def settled(status: dict, jobs: int) -> bool:
    """At least ``jobs`` runs exist, none is waiting or running, and nothing waits in the outbox
    (a run is marked done in the transaction that queues its results)."""
    counts = status["jobs"]
    idle = counts["pending"] + counts["running"] == 0 and status["outbox"]["pending"] == 0
    return idle and sum(counts.values()) >= jobs


@pytest.fixture
def storescp(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The destination of the results: dcmtk storescp, stopped however the test ends."""
    scp = StoreSCP(tmp_path / "storescp", aet="RESULTS")
    yield scp
    scp.stop()


def test_eight_scanners_and_a_per_instance_sender_at_once_lose_nothing(tmp_path: Path, storescp: StoreSCP) -> None:
    """Nine senders at once (``soak_factor()`` series each): every store acknowledged, one done run
    per series, every SEG referencing exactly the instances sent, every result delivered."""
    series_per_sender = soak_factor()
    senders: dict[str, list[PhantomSeries]] = {
        f"SCANNER{n}": [PhantomSeries(seed=100 * n + k, patient_id=f"LOAD-{n}") for k in range(series_per_sender)]
        for n in range(1, SCANNERS + 2)
    }
    per_instance_ae = f"SCANNER{SCANNERS + 1}"
    files = {
        series.series_uid: series.write(tmp_path / "sent" / series.series_uid)
        for series_list in senders.values()
        for series in series_list
    }
    sent_uids = {
        uid: {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in paths}
        for uid, paths in files.items()
    }
    by_sender = {
        ae: [path for series in series_list for path in files[series.series_uid]] for ae, series_list in senders.items()
    }
    instances = sum(len(paths) for paths in files.values())
    megabytes = sum(path.stat().st_size for paths in files.values() for path in paths) / 1e6

    port = free_port()
    node = NodeProcess(tmp_path / "state", port, [f"{storescp.aet}@127.0.0.1:{storescp.port}"], quiet=QUIET_SECONDS)
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(senders)) as pool:
            runs = {}
            for ae, paths in by_sender.items():
                send = send_per_instance if ae == per_instance_ae else send_in_one_association
                runs[ae] = pool.submit(send, paths, port, ae)
            outcomes = {ae: run.result() for ae, run in runs.items()}
        received = max(ended for _, ended in outcomes.values())
        jobs = len(files)
        wait_until(
            lambda: settled(node.status(), jobs),
            300 * series_per_sender,
            1.0,
            f"{jobs} jobs done and their results delivered",
        )
        all_results = time.monotonic()
        status = node.status()
        node_peak = peak_rss_mib(node.pid)
    finally:
        node.stop()

    for ae, (stored, _) in outcomes.items():
        assert stored == len(by_sender[ae]), (ae, stored, node.output()[-3000:])
    assert status["jobs"]["done"] == jobs and status["jobs"]["failed"] == 0, status["jobs"]
    assert status["jobs"]["rejected"] == 0 and status["series_waiting"] == 0, status
    assert status["outbox"] == {"pending": 0, "sent": jobs * (2 + KEY_IMAGES), "failed": 0}
    results = results_by_series(storescp.directory)
    for series_uid, uids in sent_uids.items():
        assert {"seg", "sr"} <= set(results.get(series_uid, {})), series_uid
        (referenced,) = results[series_uid]["seg"].ReferencedSeriesSequence
        assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == uids, series_uid

    receive_seconds = received - started
    record_figures(
        "load",
        senders=len(senders),
        series_per_sender=series_per_sender,
        per_instance_sender_instances=len(by_sender[per_instance_ae]),
        instances=instances,
        megabytes=round(megabytes, 1),
        receive_seconds=round(receive_seconds, 1),
        instances_per_second=round(instances / receive_seconds, 1),
        megabytes_per_second=round(megabytes / receive_seconds, 2),
        all_results_seconds=round(all_results - started, 1),
        node_peak_rss_mib=round(node_peak, 1),
    )
