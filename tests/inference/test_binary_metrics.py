"""The binary metrics on small cases computed by hand (scikit-learn's definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.binary_metrics import (
    average_precision,
    bootstrap_intervals,
    brier_score,
    operating_point,
    precision_recall_curve,
    reliability_bins,
    roc_curve,
    threshold_for_sensitivity,
)
from inference.metrics import roc_auc

STATISTICS = {"roc_auc": roc_auc, "pr_auc": average_precision}


def test_perfect_ranking() -> None:
    labels, scores = [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]
    assert thresholds.tolist() == [np.inf, 0.9, 0.8, 0.2, 0.1]
    assert roc_auc(labels, scores) == 1.0
    assert average_precision(labels, scores) == 1.0


def test_inverse_ranking() -> None:
    labels, scores = [1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]
    assert roc_auc(labels, scores) == 0.0
    # Precision 0, 0, 1/3, 1/2 at recall 0, 0, 1/2, 1: AP = 1/2 * 1/3 + 1/2 * 1/2.
    assert average_precision(labels, scores) == pytest.approx(5 / 12)


def test_all_tied_scores_are_one_step() -> None:
    labels, scores = [0, 1, 0, 1], [0.5] * 4
    fpr, tpr, _ = roc_curve(labels, scores)
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]
    assert roc_auc(labels, scores) == 0.5
    assert average_precision(labels, scores) == 0.5  # the prevalence: one threshold, recall 1


def test_average_precision_is_the_step_sum_not_the_trapezoid() -> None:
    labels, scores = [1, 0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5]
    precision, recall, _ = precision_recall_curve(labels, scores)
    assert precision.tolist() == pytest.approx([1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
    assert recall.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    # sum (R_n - R_{n-1}) P_n = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5
    assert average_precision(labels, scores) == pytest.approx(34 / 45)


def test_average_precision_with_a_tie_across_classes() -> None:
    labels, scores = [1, 0, 1, 1], [0.9, 0.6, 0.6, 0.3]
    # Steps: (R 1/3, P 1), tie at 0.6 (R 2/3, P 2/3), (R 1, P 3/4).
    assert average_precision(labels, scores) == pytest.approx(1 / 3 + 2 / 9 + 1 / 4)


def test_average_precision_without_positives_is_undefined() -> None:
    assert average_precision([0, 0], [0.1, 0.9]) is None
    with pytest.raises(ValueError):
        roc_curve([1, 1], [0.1, 0.9])


def test_operating_point_counts_the_threshold_as_positive() -> None:
    labels, scores = [1, 1, 0, 0, 1, 0], [0.9, 0.5, 0.5, 0.2, 0.1, 0.7]
    point = operating_point(labels, scores, 0.5)
    assert (point.tp, point.fp, point.tn, point.fn) == (2, 2, 1, 1)
    assert point.sensitivity == pytest.approx(2 / 3)
    assert point.specificity == pytest.approx(1 / 3)
    assert point.ppv == 0.5 and point.npv == 0.5 and point.accuracy == 0.5
    assert point.as_dict()["threshold"] == 0.5


def test_operating_point_rates_without_a_denominator_are_none() -> None:
    point = operating_point([0, 0, 0], [0.1, 0.2, 0.9], 0.95)
    assert point.sensitivity is None and point.ppv is None
    assert point.specificity == 1.0 and point.npv == 1.0


def test_threshold_for_sensitivity_is_the_highest_reaching_it() -> None:
    labels, scores = [1, 0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5]
    # Sensitivity 1/3 at 0.9, 2/3 at 0.7 (and 0.6), 1 at 0.5.
    assert threshold_for_sensitivity(labels, scores, 0.6) == 0.7
    assert threshold_for_sensitivity(labels, scores, 2 / 3) == 0.7
    assert threshold_for_sensitivity(labels, scores, 0.95) == 0.5
    assert threshold_for_sensitivity(labels, scores, 0.2) == 0.9
    threshold = threshold_for_sensitivity(labels, scores, 0.95)
    assert operating_point(labels, scores, threshold).sensitivity == 1.0
    assert threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9) is None
    with pytest.raises(ValueError):
        threshold_for_sensitivity(labels, scores, 1.5)


def test_brier_score() -> None:
    assert brier_score([1, 0], [0.8, 0.3]) == pytest.approx((0.2**2 + 0.3**2) / 2)
    assert brier_score([1, 0], [1.0, 0.0]) == 0.0


def test_reliability_bins() -> None:
    labels = [0, 1, 0, 1, 1, 0]
    probabilities = [0.05, 0.15, 0.12, 1.0, 0.95, 0.1]
    bins = reliability_bins(labels, probabilities, bins=10)
    assert len(bins) == 10
    assert [b.count for b in bins] == [1, 3, 0, 0, 0, 0, 0, 0, 0, 2]
    assert (bins[0].mean_predicted, bins[0].observed_fraction) == (0.05, 0.0)
    assert bins[1].mean_predicted == pytest.approx((0.15 + 0.12 + 0.1) / 3)  # 0.1 opens bin 1
    assert bins[1].observed_fraction == pytest.approx(1 / 3)
    assert bins[2].mean_predicted is None and bins[2].observed_fraction is None
    assert bins[9].mean_predicted == pytest.approx(0.975) and bins[9].observed_fraction == 1.0  # 1.0 closes bin 9
    assert (bins[9].lower, bins[9].upper) == (0.9, 1.0)


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=60)
    scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, size=60), 0, 1)
    first = bootstrap_intervals(labels, scores, STATISTICS, resamples=300, seed=7)
    again = bootstrap_intervals(labels, scores, STATISTICS, resamples=300, seed=7)
    other = bootstrap_intervals(labels, scores, STATISTICS, resamples=300, seed=8)
    assert first == again
    assert first != other
    for name, statistic in STATISTICS.items():
        interval = first[name]
        assert interval.lower <= statistic(labels, scores) <= interval.upper
        assert interval.lower < interval.upper and interval.resamples == 300 and interval.level == 0.95


def test_bootstrap_skips_resamples_lacking_a_class() -> None:
    labels, scores = [1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3]
    interval = bootstrap_intervals(labels, scores, {"roc_auc": roc_auc}, resamples=200, seed=0)["roc_auc"]
    # P(no positive in 4 draws) = (3/4)^4 ~ 0.32; P(no negative) is tiny.
    assert 100 < interval.resamples < 180
    assert interval.lower == interval.upper == 1.0
    assert bootstrap_intervals(labels, scores, {"roc_auc": roc_auc}, resamples=0)["roc_auc"] is None
