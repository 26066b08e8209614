"""The analysis of one series, shared by the worker and the offline ``process`` command."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.encode import encode_for_destinations
from dicomnode.results import ResultObject
from dicomnode.settings import Settings
from dicomnode.volume import DecodedSlice, build_volume
from inference import CTVolume, Findings

Analyze = Callable[[CTVolume], Findings]


class AnalysisUnavailable(RuntimeError):
    """The configured analysis cannot be built: weights missing or corrupt, no CUDA for "cuda"."""


def build_analyze(settings: Settings) -> Analyze:
    """The analysis the node runs: one :class:`inference.api.Analyzer` built from ``[analysis]``.

    The analyzer loads its models once, when it is built (about a second); every series then
    reuses them. Imported here, not at module level: the receiver, the command-line help and
    ``check-config`` must not pay for torch. A failure to build is an :class:`AnalysisUnavailable`
    for the command to report in one line; it is no fault of any series.
    """
    from inference.api import Analyzer

    try:
        analyzer = Analyzer(settings.analysis.options())
    except (OSError, RuntimeError, ValueError) as error:
        raise AnalysisUnavailable(f"{type(error).__name__}: {error}") from error
    return analyzer.analyze


@dataclass(frozen=True)
class SeriesResult:
    """The objects written for a series, and a summary of what was found (no patient data)."""

    objects: list[ResultObject]
    summary: dict[str, Any]


def summarize(findings: Findings) -> dict[str, Any]:
    """What the status command and the run records show of a result (no patient data).

    The classifier's keys are None when it did not run (the classical lung segmentation only);
    ``not_assessable`` holds the reason when it ran but gave no probability. ``lesion_count`` and
    ``lesion_ml`` are None, not 0, when no lesion localization ran: "none looked for" is not
    "none found".
    """
    lungs = findings.lungs
    classification = findings.classification
    localized = classification is not None or bool(findings.lesions)
    return {
        "right_lung_ml": None if lungs.right_ml is None else round(lungs.right_ml, 1),
        "left_lung_ml": None if lungs.left_ml is None else round(lungs.left_ml, 1),
        "total_lung_ml": round(lungs.total_ml, 1),
        "algorithm": f"{findings.algorithm_name} {findings.algorithm_version}",
        "probability": None if classification is None else round(float(classification.probability), 3),
        "positive": None if classification is None else bool(classification.positive),
        "threshold": None if classification is None else float(classification.threshold),
        "lesion_count": len(findings.lesions) if localized else None,
        "lesion_ml": round(findings.lesion_volume_ml, 1) if localized else None,
        "not_assessable": findings.not_assessable,
    }


def describe_summary(summary: dict[str, Any] | None) -> str:
    """One line for an operator from a :func:`summarize` record (empty for none).

    Records written before the classifier existed lack its keys; they read as lung volumes only.
    """
    if not summary:
        return ""
    volumes = ", ".join(
        f"{side} {summary[key]:.0f} ml"
        for side, key in (("right", "right_lung_ml"), ("left", "left_lung_ml"), ("total", "total_lung_ml"))
        if summary.get(key) is not None
    )
    line = f"lungs: {volumes} ({summary['algorithm']})"
    if summary.get("not_assessable"):
        return f"{line}; COVID-19 not assessable: {summary['not_assessable']}"
    if summary.get("probability") is not None:
        call = "positive" if summary.get("positive") else "negative"
        line += f"; COVID-19 {call} (p {summary['probability']:.2f}, threshold {summary['threshold']:.2f})"
    if summary.get("lesion_count") is not None:
        count = summary["lesion_count"]
        line += f"; {count} lesion{'' if count == 1 else 's'} {summary['lesion_ml']:.0f} ml"
    return line


def analyse_series(
    paths: Sequence[Path], settings: Settings, analyze: Analyze, decoded: dict[Path, DecodedSlice] | None = None
) -> SeriesResult:
    """Files of one series -> volume -> findings -> what the destinations want: SEG + SR (the SR
    alone for a scan without lungs, which the analysis reports as not assessable), key images.
    ``decoded``: files already read ahead (:mod:`dicomnode.jobs.prefetch`); it is emptied once
    the volume is built, so that its planes (as large as the volume) are not held through the
    analysis by whoever passed them.

    Raises ``VolumeError`` or ``EncodingError`` for input that can never be analysed.
    """
    try:
        series = build_volume(paths, decoded)
    finally:
        if decoded is not None:
            decoded.clear()
    findings = analyze(series.volume)
    return SeriesResult(objects=encode_for_destinations(series, findings, settings), summary=summarize(findings))
