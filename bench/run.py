"""Every benchmark of the node in one run: a table on stdout, all figures as JSON.

    .venv/bin/python bench/run.py [--repeat 3] [--json bench-figures.json]
    .venv/bin/python bench/run.py --quick      # small series, one run each: proves it works

1. receive: a 300-slice 512x512 series per sender, 1 and 4 senders, node vs dcmtk storescp;
2. end-to-end: the shared RICORD series (JPEG lossless, 255 slices) through the node to a
   storescp destination, last acknowledgement -> SEG + SR, the quiet period shown apart;
3. analysis per stage on that series, models warm (CPU; CUDA too where torch sees a GPU);
4. memory: the node's peak resident memory receiving and analysing a 600-slice series (the
   median and the highest of the runs' peaks).
Medians of --repeat runs. Figures, not assertions (see bench/receive.py, bench/analyze.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from analyze import DEFAULT_SERIES, analysis_figures  # noqa: E402
from receive import latency_figures, receive_figures, write_series  # noqa: E402

RICORD_STORESCU_OPTIONS = ("--propose-lossless",)  # storescu offers only uncompressed unless told


def run(quick: bool, repeat: int) -> dict[str, object]:
    figures: dict[str, object] = {"quick": quick, "repeat": repeat}
    with tempfile.TemporaryDirectory(prefix="decov-bench-") as temp:
        work = Path(temp)
        slices, size = (30, 128) if quick else (300, 512)
        figures["receive"] = receive_figures(work, slices, size, repeat, (1, 4))
        if quick:
            (series,) = write_series(work, 1, 40, 96)
            figures["end_to_end"] = latency_figures(series, work, 1.0, repeat)
            figures["analysis_cpu"] = analysis_figures(None, repeat, device="cpu")
        else:
            figures["end_to_end"] = latency_figures(DEFAULT_SERIES, work, 2.0, repeat, RICORD_STORESCU_OPTIONS)
            figures["analysis_cpu"] = analysis_figures(DEFAULT_SERIES, repeat, device="cpu")
        if torch.cuda.is_available():
            figures["analysis_cuda"] = analysis_figures(None if quick else DEFAULT_SERIES, repeat, device="cuda")
        (large,) = write_series(work, 1, 60 if quick else 600, 128 if quick else 512)
        figures["memory"] = latency_figures(large, work, 2.0, repeat)
    return figures


def table(figures: dict) -> str:
    lines = []
    receive = figures["receive"]
    series = receive["series"]
    lines.append(f"receive: {series['instances']} x {series['rows']}x{series['columns']} per sender ({series['megabytes']} MB)")
    lines.append(f"  {'senders':<8}{'storescp/s':>12}{'MB/s':>8}{'node/s':>10}{'MB/s':>8}{'node/dcmtk':>12}{'node MiB':>10}")
    for count in (1, 4):
        row = receive[f"{count}_senders"]
        lines.append(
            f"  {count:<8}{row['storescp_instances_per_s']:>12}{row['storescp_mb_per_s']:>8}{row['node_instances_per_s']:>10}"
            f"{row['node_mb_per_s']:>8}{row['node_over_storescp']:>12}{row['node_peak_mib']:>10}"
        )
    e2e = figures["end_to_end"]
    lines.append(f"end-to-end: {e2e['series']} ({e2e['instances']} instances)")
    lines.append(
        f"  last ack -> SEG + SR {e2e['last_ack_to_results_s']} s = quiet {e2e['quiet_seconds']} s"
        f" + {e2e['last_ack_to_results_minus_quiet_s']} s; node peak {e2e['node_peak_mib']} MiB"
    )
    for key in ("analysis_cpu", "analysis_cuda"):
        if key in figures:
            analysis = figures[key]
            stages = "  ".join(f"{stage} {seconds}" for stage, seconds in analysis["median_s"].items())
            lines.append(f"analysis on {analysis['device']} (s): {stages}")
    if "analysis_cuda" not in figures:
        lines.append("analysis on cuda: not measured (torch sees no GPU on this machine)")
    memory = figures["memory"]
    lines.append(
        f"memory: {memory['instances']}-slice series received and analysed, node peak {memory['node_peak_mib_median']} MiB"
        f" (median of {memory['runs']} runs, highest {memory['node_peak_mib']}; results"
        f" {memory['last_ack_to_results_minus_quiet_s']} s after the quiet period)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small series, one run each")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ["TCP_NODELAY"] = "1"  # dcmtk stalls ~50 ms per file on loopback without it
    figures = run(args.quick, 1 if args.quick else args.repeat)
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
