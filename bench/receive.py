"""Receive throughput, end-to-end latency and peak memory of the node, next to dcmtk's storescp.

    .venv/bin/python bench/receive.py [--slices 300] [--size 512] [--repeat 3] [--json out.json]
    .venv/bin/python bench/receive.py --quick      # small series, to prove the script works

Throughput: synthetic CT series (explicit VR little endian, one per sender) sent by dcmtk
storescu (``TCP_NODELAY=1``) with 1 and with 4 concurrent senders to
1. dcmtk storescp writing to disk (``--fork`` for concurrent senders, one process each), and
2. the node (``dicomnode serve``, its own process, each instance fsynced before it is answered).
End-to-end: a series to the node whose destination is another storescp; seconds from the last
instance acknowledged to SEG and SR received there, the quiet period shown separately. Peak
memory: the node's VmHWM at the end of each run. Medians over --repeat runs. Figures, not
assertions: nothing here passes or fails on time. ``bench/run.py`` runs this with the others.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the packages first: tests/dicomnode must not shadow dicomnode
sys.path.append(str(ROOT / "tests"))

import pydicom  # noqa: E402

from conftest import free_port  # noqa: E402
from factories import PhantomSeries  # noqa: E402  (the tests' synthetic series factory)
from peers import (  # noqa: E402
    COMPREHENSIVE_3D_SR,
    LABEL_MAP_SEG,
    NODE_READY_TIMEOUT,
    SEG,
    STORESCU,
    Process,
    StoreSCP,
    echo_ok,
    wait_until,
)


def send(files_dir: Path, aet: str, port: int, storescu_options: Sequence[str] = ()) -> float:
    """Seconds storescu takes to send the folder in one association."""
    started = time.perf_counter()
    subprocess.run(
        [STORESCU, *storescu_options, "-aec", aet, "--scan-directories", "-nh", "127.0.0.1", str(port), str(files_dir)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def send_concurrently(folders: Sequence[Path], aet: str, port: int) -> float:
    """Seconds until every folder has been sent, one storescu per folder, all at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(folders)) as pool:
        list(pool.map(lambda folder: send(folder, aet, port), folders))
    return time.perf_counter() - started


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


class BenchNode:
    """``dicomnode serve`` in its own process with a fresh state directory (and a storescp
    destination when ``destination`` is given)."""

    def __init__(self, work: Path, quiet_seconds: float, destination: StoreSCP | None = None) -> None:
        self.port = free_port()
        self.state = work / f"node-state-{self.port}"
        command = [sys.executable, "-m", "dicomnode", "serve", "--aet", "DECOVNODE", "--port", str(self.port)]
        command += ["--state-dir", str(self.state), "--quiet-seconds", str(quiet_seconds)]
        if destination is not None:
            command += ["--destination", f"RESULTS@127.0.0.1:{destination.port}"]
        self.process = Process(command, work / f"node-{self.port}.log")
        wait_until(lambda: echo_ok("DECOVNODE", self.port), NODE_READY_TIMEOUT, what="the node")

    def stop(self) -> float:
        """Stop the node; return its peak resident memory in MiB."""
        peak = peak_rss_mib(self.process.pid)
        self.process.stop()
        shutil.rmtree(self.state, ignore_errors=True)
        return peak


def throughput(folders: Sequence[Path], work: Path) -> dict[str, float]:
    """Seconds storescp and the node take to receive ``folders`` (one sender each), and the node's peak MiB."""
    out = work / "storescp-direct"
    scp = StoreSCP(out, aet="DIRECT", options=["--fork"] if len(folders) > 1 else [])
    try:
        direct = send_concurrently(folders, scp.aet, scp.port)
    finally:
        scp.stop()
        shutil.rmtree(out, ignore_errors=True)
    node = BenchNode(work, quiet_seconds=3600)  # receive only: nothing is analysed meanwhile
    try:
        received = send_concurrently(folders, "DECOVNODE", node.port)
    finally:
        peak = node.stop()
    return {"storescp_s": direct, "node_s": received, "node_peak_mib": peak}


def result_kinds(directory: Path) -> set[str]:
    """Which of SEG and SR have arrived in ``directory`` (only each file's SOP class is read: the
    SEG is tens of MB, and :func:`peers.results_by_series` reading it whole every 50 ms would
    load the machine being measured)."""
    kinds = set()
    for path in directory.iterdir():
        try:
            sop_class = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)
        except Exception:  # still being written by storescp
            continue
        kinds |= {"SEG"} if sop_class in (SEG, LABEL_MAP_SEG) else {"SR"} if sop_class == COMPREHENSIVE_3D_SR else set()
    return kinds


def end_to_end(series_dir: Path, work: Path, quiet: float, storescu_options: Sequence[str] = ()) -> dict[str, float]:
    """Send one series to the node; seconds from the last acknowledgement to SEG + SR at the destination."""
    results = StoreSCP(work / "results", aet="RESULTS")
    node = BenchNode(work, quiet, destination=results)
    try:
        sent = send(series_dir, "DECOVNODE", node.port, storescu_options)
        acknowledged = time.perf_counter()
        wait_until(lambda: result_kinds(results.directory) >= {"SEG", "SR"}, 900, 0.05, what="SEG + SR")
        latency = time.perf_counter() - acknowledged
    finally:
        peak = node.stop()
        results.stop()
        shutil.rmtree(results.directory, ignore_errors=True)
    return {"send_s": sent, "last_ack_to_results_s": latency, "node_peak_mib": peak}


def write_series(work: Path, count: int, slices: int, size: int) -> list[Path]:
    """``count`` synthetic series (distinct UIDs) of ``slices`` x ``size`` x ``size``, one folder each."""
    folders = []
    for index in range(count):
        folder = work / f"series-{slices}x{size}-{index}"
        PhantomSeries(
            slices=slices, rows=size, columns=size, pixel_spacing_mm=350 / size, slice_spacing_mm=1.0, seed=index
        ).write(folder)
        folders.append(folder)
    return folders


def megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir()) / 1e6


def receive_figures(work: Path, slices: int, size: int, repeat: int, senders: Sequence[int]) -> dict[str, object]:
    """Throughput with each number of concurrent senders, medians of ``repeat`` runs."""
    folders = write_series(work, max(senders), slices, size)
    figures: dict[str, object] = {
        "series": {"instances": slices, "rows": size, "columns": size, "megabytes": round(megabytes(folders[0]), 1)}
    }
    for count in senders:
        runs = [throughput(folders[:count], work) for _ in range(repeat)]
        instances, mb = slices * count, megabytes(folders[0]) * count
        direct = statistics.median(run["storescp_s"] for run in runs)
        node = statistics.median(run["node_s"] for run in runs)
        figures[f"{count}_senders"] = {
            "storescp_instances_per_s": round(instances / direct, 1),
            "storescp_mb_per_s": round(mb / direct, 1),
            "node_instances_per_s": round(instances / node, 1),
            "node_mb_per_s": round(mb / node, 1),
            "node_over_storescp": round(direct / node, 2),
            "node_peak_mib": round(max(run["node_peak_mib"] for run in runs)),
        }
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return figures


def latency_figures(
    series_dir: Path, work: Path, quiet: float, repeat: int, storescu_options: Sequence[str] = ()
) -> dict[str, object]:
    """End-to-end latency of one series, medians of ``repeat`` runs."""
    runs = [end_to_end(series_dir, work, quiet, storescu_options) for _ in range(repeat)]
    latency = statistics.median(run["last_ack_to_results_s"] for run in runs)
    return {
        "series": str(series_dir),
        "instances": sum(1 for p in series_dir.iterdir() if p.suffix != ".xml"),
        "quiet_seconds": quiet,
        "last_ack_to_results_s": round(latency, 2),
        "last_ack_to_results_minus_quiet_s": round(latency - quiet, 2),
        "node_peak_mib": round(max(run["node_peak_mib"] for run in runs)),
        "node_peak_mib_median": round(statistics.median(run["node_peak_mib"] for run in runs)),
        "runs": repeat,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quiet-seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="30 slices of 128x128, one run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ["TCP_NODELAY"] = "1"  # dcmtk (storescu and storescp) stalls ~50 ms per file on loopback without it
    if args.quick:
        args.slices, args.size, args.repeat = 30, 128, 1
    with tempfile.TemporaryDirectory(prefix="decov-bench-") as temp:
        work = Path(temp)
        figures = receive_figures(work, args.slices, args.size, args.repeat, (1, 4))
        (series,) = write_series(work, 1, args.slices, args.size)
        figures["end_to_end"] = latency_figures(series, work, args.quiet_seconds, args.repeat)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
