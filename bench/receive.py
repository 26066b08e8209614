"""Receive throughput and end-to-end latency of the node, next to dcmtk's storescp.

    .venv/bin/python bench/receive.py [--slices 300] [--size 512] [--repeat 3] [--json out.json]
    .venv/bin/python bench/receive.py --quick      # a small series, to prove the script works

Sends one synthetic CT series (explicit VR little endian) with dcmtk storescu to
1. dcmtk storescp writing to disk, and
2. the node (`dicomnode serve`, its own process) whose destination is another storescp,
and prints instances/s and MB/s for both, their ratio, and for the node the time from the last
instance acknowledged to SEG + SR received, with the quiet period shown separately. Medians
over --repeat runs. Figures, not assertions: nothing here passes or fails on time.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from factories import PhantomSeries  # noqa: E402  (the tests' synthetic series factory)
from peers import NODE_READY_TIMEOUT, Process, StoreSCP, echo_ok, wait_until  # noqa: E402
from conftest import free_port  # noqa: E402

STORESCU = "/usr/bin/storescu"


def send(files_dir: Path, aet: str, port: int) -> float:
    """Seconds storescu takes to send the folder in one association."""
    started = time.perf_counter()
    subprocess.run(
        [STORESCU, "-aec", aet, "--scan-directories", "127.0.0.1", str(port), str(files_dir)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def bench_storescp(series_dir: Path, work: Path) -> float:
    out = work / "storescp-direct"
    scp = StoreSCP(out, aet="DIRECT")
    try:
        return send(series_dir, scp.aet, scp.port)
    finally:
        scp.stop()
        shutil.rmtree(out, ignore_errors=True)


def bench_node(series_dir: Path, work: Path, quiet: float) -> tuple[float, float]:
    """(send seconds, seconds from last acknowledgement to SEG + SR at the destination)."""
    results = StoreSCP(work / "results", aet="RESULTS")
    port = free_port()
    state = work / "node-state"
    command = [sys.executable, "-m", "dicomnode", "serve", "--aet", "DECOVNODE", "--port", str(port)]
    command += ["--state-dir", str(state), "--quiet-seconds", str(quiet)]
    command += ["--destination", f"RESULTS@127.0.0.1:{results.port}"]
    node = Process(command, work / "node.log")
    try:
        wait_until(lambda: echo_ok("DECOVNODE", port), NODE_READY_TIMEOUT, what="the node")
        seconds = send(series_dir, "DECOVNODE", port)
        acknowledged = time.perf_counter()
        wait_until(lambda: len(results.files()) >= 2, 900, 0.05, what="SEG + SR")
        return seconds, time.perf_counter() - acknowledged
    finally:
        node.stop()
        results.stop()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work / "results", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quiet-seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="30 slices of 128x128, one run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    # dcmtk (storescu and storescp alike) stalls ~50 ms per file on loopback without it.
    os.environ["TCP_NODELAY"] = "1"
    if args.quick:
        args.slices, args.size, args.repeat = 30, 128, 1

    with tempfile.TemporaryDirectory(prefix="decov-bench-") as temp:
        work = Path(temp)
        series = PhantomSeries(
            slices=args.slices, rows=args.size, columns=args.size, pixel_spacing_mm=350 / args.size, slice_spacing_mm=1.0
        )
        paths = series.write(work / "series")
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        direct, node_send, latency = [], [], []
        for _ in range(args.repeat):
            direct.append(bench_storescp(work / "series", work))
            sent, waited = bench_node(work / "series", work, args.quiet_seconds)
            node_send.append(sent)
            latency.append(waited)

    n = len(paths)
    figures = {
        "series": {"instances": n, "rows": args.size, "columns": args.size, "megabytes": round(megabytes, 1)},
        "runs": args.repeat,
        "storescp_instances_per_s": round(n / statistics.median(direct), 1),
        "storescp_mb_per_s": round(megabytes / statistics.median(direct), 1),
        "node_instances_per_s": round(n / statistics.median(node_send), 1),
        "node_mb_per_s": round(megabytes / statistics.median(node_send), 1),
        "quiet_seconds": args.quiet_seconds,
        "last_ack_to_results_s": round(statistics.median(latency), 2),
        "last_ack_to_results_minus_quiet_s": round(statistics.median(latency) - args.quiet_seconds, 2),
    }
    figures["node_over_storescp"] = round(figures["node_instances_per_s"] / figures["storescp_instances_per_s"], 2)
    width = max(len(k) for k in figures)
    print(f"{n} instances, {args.size}x{args.size}, {megabytes:.0f} MB, median of {args.repeat} run(s)")
    for key, value in figures.items():
        if key != "series":
            print(f"  {key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
