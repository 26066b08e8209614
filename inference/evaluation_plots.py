"""The evaluation's figures as PNG bytes: ROC curve, precision-recall curve, reliability diagram.

Why matplotlib's object API on an Agg canvas rather than pyplot: no global figure state and no
display backend, so the command runs the same on a headless server and inside tests.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from inference.binary_metrics import ReliabilityBin, precision_recall_curve, roc_curve

SIZE_INCHES = (5.0, 5.0)
DPI = 100


def _figure() -> tuple[Figure, object]:
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    return figure, axes


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def roc_png(
    labels: Sequence[int],
    probabilities: Sequence[float],
    title: str,
    marks: Sequence[tuple[str, float, float]] = (),
) -> bytes:
    """ROC curve; ``marks`` are operating points as (name, 1 - specificity, sensitivity)."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    axes.plot(fpr, tpr, color="C0", linewidth=2, label="model")
    for number, (name, x, y) in enumerate(marks):
        axes.plot([x], [y], marker="o", linestyle="none", color=f"C{number + 1}", label=name)
    axes.set_xlabel("1 - specificity (false positive rate)")
    axes.set_ylabel("sensitivity (true positive rate)")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="lower right", fontsize=8)
    return _png(figure)


def pr_png(labels: Sequence[int], probabilities: Sequence[float], title: str) -> bytes:
    """Precision-recall curve drawn as the steps whose area is the average precision."""
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    prevalence = float(np.mean(np.asarray(labels, dtype=bool)))
    figure, axes = _figure()
    axes.axhline(prevalence, color="0.6", linestyle="--", linewidth=1, label=f"chance ({prevalence:.3f})")
    # Precision P_n holds on (R_{n-1}, R_n]: the step-wise sum of the average precision.
    axes.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", color="C0", linewidth=2, label="model")
    axes.set_xlabel("recall (sensitivity)")
    axes.set_ylabel("precision (PPV)")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="lower left", fontsize=8)
    return _png(figure)


def reliability_png(bins: Sequence[ReliabilityBin], title: str) -> bytes:
    """Observed fraction of positives against the mean predicted probability, one dot per bin
    (labelled with its number of scans: a bin of two scans says little)."""
    filled = [b for b in bins if b.count]
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    x = [b.mean_predicted for b in filled]
    y = [b.observed_fraction for b in filled]
    axes.plot(x, y, color="C0", linewidth=1.5, marker="o", label="model")
    for b in filled:
        right = b.mean_predicted > 0.9
        axes.annotate(str(b.count), (b.mean_predicted, b.observed_fraction), textcoords="offset points",
                      xytext=(-4 if right else 4, -10), ha="right" if right else "left", fontsize=7, color="0.3")
    axes.set_xlabel("mean predicted probability (bin)")
    axes.set_ylabel("observed fraction positive")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper left", fontsize=8)
    return _png(figure)
