"""Metrics of a binary classifier on per-scan probabilities, in numpy alone.

Why here and not scikit-learn: the package does not depend on it, and the figures must match
the paper's (which came from scikit-learn), so the definitions follow scikit-learn's exactly:
the ROC and precision-recall curves step through the distinct scores, average precision is the
step-wise sum ``sum_n (R_n - R_{n-1}) P_n`` (no interpolation), and a scan is called positive
when its probability is at or above the threshold. The ROC AUC itself is
:func:`inference.metrics.roc_auc`, shared with training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Statistic = Callable[[np.ndarray, np.ndarray], float | None]
"""A figure computed from (labels, scores); None when it is undefined (e.g. one class only)."""


def _arrays(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of one length, got {y.shape} and {s.shape}")
    return y, s


def _cumulative_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives when calling positive at each distinct score, highest first.

    Tied scores are one step: a threshold cannot separate them.
    """
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps, s[last_of_tie]


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates and their thresholds, starting from (0, 0) at +inf."""
    y, s = _arrays(labels, scores)
    if y.all() or not y.any():
        raise ValueError("a ROC curve needs both positive and negative scans")
    tps, fps, thresholds = _cumulative_counts(y, s)
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, thresholds]


def precision_recall_curve(
    labels: Sequence[int], scores: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score, highest threshold first."""
    y, s = _arrays(labels, scores)
    if not y.any():
        raise ValueError("a precision-recall curve needs positive scans")
    tps, fps, thresholds = _cumulative_counts(y, s)
    return tps / (tps + fps), tps / tps[-1], thresholds


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the precision-recall curve, scikit-learn's step-wise sum; None without positives."""
    y, s = _arrays(labels, scores)
    if not y.any():
        return None
    precision, recall, _ = precision_recall_curve(y, s)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class OperatingPoint:
    """The calls at one threshold; a rate is None when its denominator is zero."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


def operating_point(labels: Sequence[int], scores: Sequence[float], threshold: float) -> OperatingPoint:
    """Counts and rates when a scan is called positive at ``score >= threshold``."""
    y, s = _arrays(labels, scores)
    called = s >= threshold
    tp, fp = int(np.sum(called & y)), int(np.sum(called & ~y))
    fn, tn = int(np.sum(~called & y)), int(np.sum(~called & ~y))
    return OperatingPoint(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        accuracy=_ratio(tp + tn, y.size),
    )


def threshold_for_sensitivity(labels: Sequence[int], scores: Sequence[float], target: float) -> float | None:
    """The highest threshold (a score) whose sensitivity is at least ``target``.

    Why the highest: it buys the target sensitivity at the least cost in specificity. None
    without positive scans.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"the target sensitivity must lie in [0, 1], got {target}")
    y, s = _arrays(labels, scores)
    if not y.any():
        return None
    tps, _, thresholds = _cumulative_counts(y, s)
    # Sensitivity only grows as the threshold falls; the last step reaches 1.
    first = int(np.argmax(tps / tps[-1] >= target - 1e-12))
    return float(thresholds[first])


def brier_score(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    """Mean squared difference between probability and outcome (0 is perfect, 0.25 a coin)."""
    y, p = _arrays(labels, probabilities)
    if y.size == 0:
        raise ValueError("the Brier score needs at least one scan")
    return float(np.mean((p - y) ** 2))


@dataclass(frozen=True)
class ReliabilityBin:
    """One probability bin [lower, upper) (the last one closed): how often its scans were positive."""

    lower: float
    upper: float
    count: int
    mean_predicted: float | None
    observed_fraction: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reliability_bins(
    labels: Sequence[int], probabilities: Sequence[float], bins: int = 10
) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1]: mean predicted probability against the observed fraction.

    A calibrated model puts every bin on the diagonal. Empty bins are kept (count 0, values
    None) so that every report has the same rows.
    """
    y, p = _arrays(labels, probabilities)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("reliability bins need probabilities in [0, 1]")
    index = np.minimum((p * bins).astype(int), bins - 1)
    result = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        result.append(
            ReliabilityBin(
                lower=b / bins,
                upper=(b + 1) / bins,
                count=count,
                mean_predicted=float(p[inside].mean()) if count else None,
                observed_fraction=float(y[inside].mean()) if count else None,
            )
        )
    return result


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval and the number of resamples it rests on."""

    lower: float
    upper: float
    level: float
    resamples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_intervals(
    labels: Sequence[int],
    scores: Sequence[float],
    statistics: Mapping[str, Statistic],
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Interval | None]:
    """Percentile bootstrap intervals, resampling scans with replacement.

    All statistics see the same resamples, so their intervals are comparable. A resample that
    lacks a class is drawn but skipped (AUCs are undefined on it), so the interval rests on
    ``Interval.resamples`` <= ``resamples`` values; None when none was usable.
    """
    y, s = _arrays(labels, scores)
    if not 0.0 < level < 1.0:
        raise ValueError(f"the interval level must lie in (0, 1), got {level}")
    values: dict[str, list[float]] = {name: [] for name in statistics}
    rng = np.random.default_rng(seed)
    for _ in range(resamples if y.size else 0):
        pick = rng.integers(0, y.size, size=y.size)
        ys = y[pick]
        if ys.all() or not ys.any():
            continue
        for name, statistic in statistics.items():
            value = statistic(ys, s[pick])
            if value is not None:
                values[name].append(value)
    tail = 100.0 * (1.0 - level) / 2.0
    return {
        name: (
            Interval(float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail)), level, len(v))
            if v
            else None
        )
        for name, v in values.items()
    }
