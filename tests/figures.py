"""Figures the robustness tests measure (rounds survived, fuzz cases, throughput, peak memory).

A test calls :func:`record_figures` with what it measured. When ``DICOMNODE_FIGURES`` names a
JSON file (``bench/promises.py`` sets it), the figures are merged into that file under the
test's key, for the promises document; either way they are printed, so ``pytest -s`` shows
them. Recording never asserts anything: the tests' assertions are their own.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

FIGURES_ENV = "DICOMNODE_FIGURES"
#: Set to a positive number to scale the soak variants (rounds, cases, senders) up.
SOAK_ENV = "DICOMNODE_SOAK"


def soak_factor() -> int:
    """How many times the CI size a soak run is (1 unless ``DICOMNODE_SOAK`` says more)."""
    try:
        return max(1, int(os.environ.get(SOAK_ENV, "1")))
    except ValueError:
        return 1


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings of the fuzz tests: the same cases every run, none stored, CI-sized
    (a soak run multiplies them)."""
    return settings(
        database=None,
        deadline=None,
        derandomize=True,
        max_examples=examples * soak_factor(),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


def record_figures(key: str, **values: Any) -> None:
    """Print ``values`` and merge them into the figures file under ``key`` (when one is set)."""
    print(f"figures {key}: {json.dumps(values, sort_keys=True)}")
    target = os.environ.get(FIGURES_ENV)
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # tests may run in parallel processes
        handle.seek(0)
        text = handle.read()
        figures = json.loads(text) if text.strip() else {}
        figures[key] = values
        handle.seek(0)
        handle.truncate()
        json.dump(figures, handle, indent=2, sort_keys=True)
        handle.write("\n")
