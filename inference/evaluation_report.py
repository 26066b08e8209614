"""The evaluation of per-scan predictions against truth: the JSON document and the HTML report.

Why one document: the JSON is the record (every figure, the per-scan rows it came from, how the
intervals were drawn) and the HTML is rendered from it alone, so the two can never disagree. The
report states n and the confidence intervals beside every area: on a cohort of about a hundred
scans an AUC without its interval says little.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.binary_metrics import (
    ReliabilityBin,
    average_precision,
    bootstrap_intervals,
    brier_score,
    operating_point,
    reliability_bins,
    threshold_for_sensitivity,
)
from inference.evaluation_plots import pr_png, reliability_png, roc_png
from inference.mask_metrics import lesion_hit_in_file, lung_dice
from inference.metrics import roc_auc
from inference.predictions import PredictionsError, ScanRecord

REPORT_HTML = "report.html"
ROC_PNG = "roc.png"
PR_PNG = "pr.png"
RELIABILITY_PNG = "reliability.png"
RELIABILITY_BINS = 10
LEVEL = 0.95
STYLE = (
    "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}table{border-collapse:collapse;"
    "margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:32%}</style>"
)

HIT_DEFINITION = (
    "over scans labelled positive, called positive by the predicting run and given a lesion mask: "
    "a primary hit when the centre of the primary reported lesion lies in the mask (METHOD step 10); "
    "an any hit when the centre of any reported lesion does"
)


def build_document(
    records: Sequence[ScanRecord],
    source: str,
    thresholds: Sequence[float] = (0.5,),
    target_sensitivity: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    unmatched_truth: Sequence[str] = (),
) -> dict[str, Any]:
    """Every figure of the evaluation; the scans without a probability are listed, not scored."""
    if not thresholds:
        raise ValueError("give at least one threshold")
    if resamples < 0:
        raise ValueError(f"the number of bootstrap resamples cannot be negative, got {resamples}")
    scored = [r for r in records if r.probability is not None]
    y = np.array([r.label for r in scored], dtype=int)
    p = np.array([r.probability for r in scored], dtype=float)
    if y.size == 0 or y.all() or not y.any():
        raise PredictionsError(
            f"the assessable scans must include positive and negative labels (got {int(y.sum())} positive, "
            f"{int(y.size - y.sum())} negative)"
        )
    intervals = bootstrap_intervals(
        y, p, {"roc_auc": roc_auc, "pr_auc": average_precision}, resamples=resamples, seed=seed, level=LEVEL
    )
    target_threshold = threshold_for_sensitivity(y, p, target_sensitivity)
    rows = _per_scan_rows(records, thresholds[0])
    document: dict[str, Any] = {
        "source": source,
        "n_scans": int(y.size),
        "n_positive": int(y.sum()),
        "n_negative": int(y.size - y.sum()),
        "prevalence": float(y.mean()),
        "n_not_assessable": len(records) - len(scored),
        "not_assessable": [{"case": r.case, "reason": r.not_assessable} for r in records if r.probability is None],
        "roc_auc": roc_auc(y, p),
        "roc_auc_ci": _interval(intervals["roc_auc"]),
        "pr_auc": average_precision(y, p),
        "pr_auc_ci": _interval(intervals["pr_auc"]),
        "bootstrap": {"method": "percentile, scans resampled with replacement; resamples lacking a class skipped",
                      "resamples": resamples, "seed": seed, "level": LEVEL},
        "operating_points": [operating_point(y, p, t).as_dict() for t in thresholds],
        "per_scan_threshold": float(thresholds[0]),
        "target_sensitivity_point": {
            "target": target_sensitivity, **operating_point(y, p, target_threshold).as_dict()
        },
        "brier": brier_score(y, p),
        "reliability": [b.as_dict() for b in reliability_bins(y, p, RELIABILITY_BINS)],
    }
    hits = _lesion_hit_rate(rows)
    if hits is not None:
        document["lesion_hit_rate"] = hits
    dice = _lung_dice_summary(rows)
    if dice is not None:
        document["lung_dice"] = dice
    if unmatched_truth:
        document["truth_without_prediction"] = list(unmatched_truth)
    document["per_scan"] = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
    return document


def _interval(interval: Any) -> dict[str, Any] | None:
    return None if interval is None else interval.as_dict()


def _per_scan_rows(records: Sequence[ScanRecord], threshold: float) -> list[dict[str, Any]]:
    """One row per input scan; lesion and lung fields are null where no truth or prediction allows them.

    ``positive`` is the call at ``threshold`` (the first asked for); ``run_positive`` the call of
    the ``predict`` run (folder input), on which the lesions were localized.
    """
    rows = []
    for r in records:
        primary = any_hit = dice = None
        hit_counted = r.label == 1 and bool(r.called_positive) and r.lesion_mask is not None and r.lesions is not None
        if hit_counted:
            hit = lesion_hit_in_file(r.lesions, r.lesion_mask)
            primary, any_hit = hit.primary, hit.any
        if r.lung_mask is not None and r.predicted_lungs is not None:
            dice = lung_dice(r.predicted_lungs, r.lung_mask)
        rows.append(
            {
                "case": r.case,
                "label": r.label,
                "probability": r.probability,
                "positive": None if r.probability is None else r.probability >= threshold,
                "run_positive": r.called_positive,
                "not_assessable": r.not_assessable,
                "primary_hit": primary,
                "any_hit": any_hit,
                "lung_dice": dice,
                "_lesion_truth": r.lesion_mask is not None,
                "_lesion_centres": r.lesions is not None,
            }
        )
    return rows


def _lesion_hit_rate(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """None when no lesion mask was given; a rate of None when no scan qualified."""
    if not any(row["_lesion_truth"] for row in rows):
        return None
    if not any(row["_lesion_truth"] and row["_lesion_centres"] for row in rows):
        return {"n_scans": 0, "primary": None, "any": None, "definition": HIT_DEFINITION,
                "note": "the predictions give no lesion centres (only 'predict' output folders do)"}
    counted = [row for row in rows if row["primary_hit"] is not None]
    n = len(counted)
    return {
        "n_scans": n,
        "primary_hits": sum(row["primary_hit"] for row in counted),
        "any_hits": sum(row["any_hit"] for row in counted),
        "primary": sum(row["primary_hit"] for row in counted) / n if n else None,
        "any": sum(row["any_hit"] for row in counted) / n if n else None,
        "definition": HIT_DEFINITION,
    }


def _lung_dice_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    values = [row["lung_dice"] for row in rows if row["lung_dice"] is not None]
    if not values:
        return None
    return {"n_scans": len(values), "mean": float(np.mean(values)), "min": min(values), "max": max(values)}


def write_report(document: dict[str, Any], folder: Path) -> Path:
    """``report.html`` with its figures embedded, and the same figures as PNG beside it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scored = [row for row in document["per_scan"] if row["probability"] is not None]
    labels = [row["label"] for row in scored]
    probabilities = [row["probability"] for row in scored]
    n = f"n = {document['n_scans']} ({document['n_positive']} positive, {document['n_negative']} negative)"
    target = document["target_sensitivity_point"]
    marks = [
        (f"threshold {p['threshold']:.3g}", 1.0 - p["specificity"], p["sensitivity"])
        for p in document["operating_points"]
    ]
    marks.append((f"threshold {target['threshold']:.3g} (sensitivity >= {target['target']:.3g})",
                  1.0 - target["specificity"], target["sensitivity"]))
    figures = {
        ROC_PNG: roc_png(labels, probabilities, f"ROC AUC {_area(document, 'roc_auc')}\n{n}", marks),
        PR_PNG: pr_png(labels, probabilities, f"PR AUC (AP) {_area(document, 'pr_auc')}\n{n}"),
        RELIABILITY_PNG: reliability_png(
            [ReliabilityBin(**b) for b in document["reliability"]], f"Brier score {document['brier']:.3f}\n{n}"
        ),
    }
    for name, png in figures.items():
        (folder / name).write_bytes(png)
    path = folder / REPORT_HTML
    path.write_text(render_html(document, figures))
    return path


def _area(document: dict[str, Any], key: str) -> str:
    ci = document[f"{key}_ci"]
    text = f"{document[key]:.3f}"
    return text if ci is None else f"{text} (95 % CI {ci['lower']:.3f} to {ci['upper']:.3f})"


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _point_row(point: dict[str, Any], name: str) -> tuple[Any, ...]:
    rates = ("sensitivity", "specificity", "ppv", "npv", "accuracy")
    return (name, *(_f(point[k]) for k in rates), point["tp"], point["fp"], point["tn"], point["fn"])


def render_html(document: dict[str, Any], figures: dict[str, bytes]) -> str:
    """A short self-contained page: every figure inline as a data URI."""
    d = document
    boot = d["bootstrap"]
    ci_note = (
        f"95 % confidence intervals: percentile bootstrap over {boot['resamples']} resamples of the "
        f"{d['n_scans']} scans (seed {boot['seed']}; resamples lacking a class skipped)."
        if boot["resamples"] else "No bootstrap: no confidence intervals."
    )
    target = d["target_sensitivity_point"]
    points = [_point_row(p, f"{p['threshold']:.4g}") for p in d["operating_points"]]
    points.append(_point_row(target, f"{target['threshold']:.4g} (sensitivity >= {target['target']:.3g})"))
    reliability = [
        (f"{b['lower']:.1f} to {b['upper']:.1f}", b["count"], _f(b["mean_predicted"]), _f(b["observed_fraction"]))
        for b in d["reliability"]
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>DeCoVNet evaluation</title>",
        STYLE,
        "</head><body><h1>DeCoVNet evaluation</h1>",
        f"<p>Predictions: <code>{html.escape(d['source'])}</code>.</p>",
        (
            f"<p><b>n = {d['n_scans']} scans</b>: {d['n_positive']} positive, {d['n_negative']} negative "
            f"(prevalence {d['prevalence']:.3f}); {d['n_not_assessable']} more not assessable, excluded.</p>"
        ),
        "<ul>",
        f"<li>ROC AUC: <b>{_area(d, 'roc_auc')}</b></li>",
        f"<li>PR AUC (average precision): <b>{_area(d, 'pr_auc')}</b>; chance level is the prevalence</li>",
        f"<li>Brier score: <b>{d['brier']:.3f}</b> (0 is perfect; 0.25 is a constant 0.5)</li>",
        "</ul>",
        f"<p>{html.escape(ci_note)}</p>",
        "<h2>Operating points</h2><p>A scan is called positive when its probability is at or above the threshold.</p>",
        _table(("threshold", "sensitivity", "specificity", "PPV", "NPV", "accuracy", "TP", "FP", "TN", "FN"), points),
    ]
    if "lesion_hit_rate" in d:
        h = d["lesion_hit_rate"]
        parts.append(
            f"<h2>Lesion hit rate</h2><p>Primary lesion: <b>{_f(h['primary'])}</b>; any reported lesion: "
            f"<b>{_f(h['any'])}</b>; n = {h['n_scans']} scans ({html.escape(h['definition'])}).</p>"
        )
    if "lung_dice" in d:
        ld = d["lung_dice"]
        parts.append(
            f"<h2>Lung Dice</h2><p>Mean <b>{ld['mean']:.3f}</b> (min {ld['min']:.3f}, max {ld['max']:.3f}) "
            f"over n = {ld['n_scans']} scans with a reference lung mask.</p>"
        )
    parts += [
        "<h2>Figures</h2><p>",
        *(f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
          for name, png in figures.items()),
        "</p><h2>Calibration</h2>",
        _table(("probability bin", "scans", "mean predicted", "observed positive"), reliability),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
