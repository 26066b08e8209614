"""The analysis of one series, shared by the worker and the offline ``process`` command."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from dicomnode.encode import encode_results
from dicomnode.settings import Settings
from dicomnode.volume import build_volume
from inference import CTVolume, Findings

Analyze = Callable[[CTVolume], Findings]


@dataclass(frozen=True)
class SeriesResult:
    """The objects written for a series, and a summary of what was found (no patient data)."""

    datasets: list[Dataset]
    summary: dict[str, Any]


def summarize(findings: Findings) -> dict[str, Any]:
    lungs = findings.lungs
    return {
        "right_lung_ml": None if lungs.right_ml is None else round(lungs.right_ml, 1),
        "left_lung_ml": None if lungs.left_ml is None else round(lungs.left_ml, 1),
        "total_lung_ml": round(lungs.total_ml, 1),
        "algorithm": f"{findings.algorithm_name} {findings.algorithm_version}",
    }


def describe_summary(summary: dict[str, Any] | None) -> str:
    """One line for an operator from a :func:`summarize` record (empty for none)."""
    if not summary:
        return ""
    volumes = ", ".join(
        f"{side} {summary[key]:.0f} ml"
        for side, key in (("right", "right_lung_ml"), ("left", "left_lung_ml"), ("total", "total_lung_ml"))
        if summary.get(key) is not None
    )
    return f"lungs: {volumes} ({summary['algorithm']})"


def analyse_series(paths: Sequence[Path], settings: Settings, analyze: Analyze) -> SeriesResult:
    """Files of one series -> volume -> findings -> SEG + SR datasets.

    Raises ``VolumeError`` or ``EncodingError`` for input that can never be analysed.
    """
    series = build_volume(paths)
    findings = analyze(series.volume)
    return SeriesResult(datasets=encode_results(series, findings, settings), summary=summarize(findings))
