"""The benchmark suite runs and prints its table (quick mode; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import require_tool
from peers import STORESCP, STORESCU

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def test_benchmark_suite_quick_mode(tmp_path: Path) -> None:
    require_tool(STORESCU)
    require_tool(STORESCP)
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    receive = figures["receive"]
    assert receive["series"]["instances"] == 30
    for senders in ("1_senders", "4_senders"):
        for key in ("storescp_instances_per_s", "node_instances_per_s", "node_over_storescp", "node_peak_mib"):
            assert receive[senders][key] > 0, (senders, key)
    end_to_end = figures["end_to_end"]
    assert end_to_end["instances"] == 40
    assert end_to_end["last_ack_to_results_s"] > end_to_end["quiet_seconds"]  # results come after the quiet period
    stages = figures["analysis_cpu"]["median_s"]
    for stage in ("read", "lungs", "resample", "classifier", "localization", "encode", "send", "total"):
        assert stage in stages and stage in result.stdout
    assert stages["total"] > 0
    assert figures["memory"]["instances"] == 60 and figures["memory"]["node_peak_mib"] > 0
    for heading in ("receive:", "end-to-end:", "analysis on cpu", "memory:"):
        assert heading in result.stdout
