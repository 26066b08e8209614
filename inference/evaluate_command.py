"""``python -m inference evaluate``: score per-scan predictions against truth.

Why a command: the paper's figures (ROC AUC 0.959 on the released predictions) must be
reproducible from the released file, and the same figures, with their confidence intervals,
computed for any retrained model from its ``predict`` outputs. This module only wires the
loading (:mod:`inference.predictions`) to the document and report
(:mod:`inference.evaluation_report`).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from inference.predictions import (
    apply_truth,
    load_predictions,
    load_truth,
    require_labels,
    unmatched_truth,
)

logger = logging.getLogger(__name__)


def evaluate_command(args: argparse.Namespace) -> int:
    """Load, score, write ``--json`` and ``--report``; print the headline figures."""
    from inference.evaluation_report import (  # matplotlib: only when run
        build_document,
        write_report,
    )

    records = load_predictions(args.predictions)
    unmatched: list[str] = []
    if args.truth is not None:
        truth = load_truth(args.truth)
        records = apply_truth(records, truth)
        unmatched = unmatched_truth(records, truth)
        if unmatched:
            logger.warning("%d truth row(s) have no prediction: %s", len(unmatched), ", ".join(unmatched[:5]))
    require_labels(records)
    document = build_document(
        records,
        source=str(args.predictions),
        thresholds=args.thresholds,
        target_sensitivity=args.target_sensitivity,
        resamples=args.bootstrap,
        seed=args.seed,
        unmatched_truth=unmatched,
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.report is not None:
        logger.info("report written to %s", write_report(document, args.report))
    print(summary(document))
    return 0


def summary(document: dict[str, Any]) -> str:
    """The headline figures in a few lines, rounded to three decimals."""
    d = document

    def area(key: str) -> str:
        ci = d[f"{key}_ci"]
        return f"{d[key]:.3f}" + ("" if ci is None else f" (95% CI {ci['lower']:.3f}-{ci['upper']:.3f})")

    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        (
            f"n = {d['n_scans']} ({d['n_positive']} positive, {d['n_negative']} negative); "
            f"{d['n_not_assessable']} not assessable, excluded"
        ),
        f"ROC AUC {area('roc_auc')}; PR AUC {area('pr_auc')}; Brier {d['brier']:.3f}",
    ]
    target = d["target_sensitivity_point"]
    for p, note in (*((p, "") for p in d["operating_points"]), (target, f" (sensitivity >= {target['target']:.3g})")):
        lines.append(
            f"threshold {p['threshold']:.4g}{note}: sensitivity {rate(p['sensitivity'])}, specificity "
            f"{rate(p['specificity'])}, PPV {rate(p['ppv'])}, NPV {rate(p['npv'])}, accuracy {rate(p['accuracy'])} "
            f"(TP {p['tp']}, FP {p['fp']}, TN {p['tn']}, FN {p['fn']})"
        )
    if "lesion_hit_rate" in d:
        h = d["lesion_hit_rate"]
        lines.append(f"lesion hit rate: primary {rate(h['primary'])}, any {rate(h['any'])} (n = {h['n_scans']})")
    if "lung_dice" in d:
        ld = d["lung_dice"]
        lines.append(f"lung Dice: mean {ld['mean']:.3f}, min {ld['min']:.3f} (n = {ld['n_scans']})")
    return "\n".join(lines)
