"""The benchmark runs and prints its figures (quick mode; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import require_tool
from peers import STORESCP, STORESCU

BENCH = Path(__file__).resolve().parents[1] / "bench" / "receive.py"


def test_receive_benchmark_quick_mode(tmp_path: Path) -> None:
    require_tool(STORESCU)
    require_tool(STORESCP)
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["series"]["instances"] == 30
    for key in ("storescp_instances_per_s", "node_instances_per_s", "node_over_storescp", "last_ack_to_results_s"):
        assert figures[key] > 0, key
        assert key in result.stdout


def test_analysis_benchmark_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "analysis.json"
    bench = BENCH.parent / "analyze.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--quick", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    for stage in ("read", "lungs", "resample", "classifier", "localization", "encode", "total"):
        assert stage in figures["median_s"] and stage in result.stdout
    assert figures["median_s"]["total"] > 0
