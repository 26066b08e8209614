"""Evaluation on a held-out negative scan with and without inserted lesions.

Why this form: there is no labelled COVID-19 cohort with lesion masks here, but lesions inserted
into a scan no model was trained on give exact voxel truth. For each case the scan gets new
lesions (:mod:`inference.synth`), and the analysis is measured against them:

- probability on the clean scan and on each lesion case (and the ROC AUC over all of them);
- lesion inclusion: the fraction of inserted lesion voxels inside the predicted lung mask (a
  lesion the mask leaves out is one the classifier never sees);
- lesion hit rate (METHOD step 10): for each case called positive, a hit when the centre of the
  primary predicted lesion lies inside an inserted lesion; also whether any reported lesion's
  centre does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.api import Analyzer
from inference.grid import VoxelGrid
from inference.io import read_volume
from inference.lungs import segment_lungs
from inference.mask_metrics import lesion_hit
from inference.metrics import roc_auc
from inference.synth import LesionLibrary, insert_lesions
from inference.training.scans import spacing_zyx
from inference.types import CTVolume, Findings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseResult:
    case: str
    label: int
    probability: float | None
    positive: bool | None
    inserted_ml: float
    lesion_voxels_in_lungs: float | None
    primary_hit: bool | None
    any_hit: bool | None
    reported_lesions: int


def evaluate_inserted(
    analyzer: Analyzer, scan: Path, library: LesionLibrary, cases: int, seed: int
) -> dict[str, Any]:
    """Clean scan plus ``cases`` lesion cases; per-case results and the summary figures."""
    volume = read_volume(scan)
    results = [_measure("clean", volume, None, analyzer.analyze(volume))]
    for case in lesion_cases(volume, library, cases, seed):
        results.append(_measure(case.name, case.volume, case.mask, analyzer.analyze(case.volume)))
        logger.info("%s", results[-1])
    return {"scan": scan.name, "seed": seed, "cases": [asdict(r) for r in results], **summarize(results)}


@dataclass(frozen=True)
class LesionCase:
    """The held-out scan with inserted lesions, and their voxel truth (bool, the scan's shape)."""

    name: str
    volume: CTVolume
    mask: np.ndarray


def lesion_cases(volume: CTVolume, library: LesionLibrary, cases: int, seed: int) -> Iterator[LesionCase]:
    """``cases`` copies of ``volume``, each with new lesions (case k draws from ``[seed, k]``).

    Lesions go into the classical lung mask on the original grid, so the truth is exact on the
    scan every model sees.
    """
    lungs = segment_lungs(volume) > 0
    superior_is_up = VoxelGrid.of(volume).superior_is_up
    for case in range(cases):
        rng = np.random.default_rng([seed, case])
        inserted = insert_lesions(volume.hu, lungs, spacing_zyx(volume), library, rng, superior_is_up=superior_is_up)
        with_lesions = CTVolume(inserted.hu, volume.spacing, volume.origin, volume.direction)
        yield LesionCase(f"lesions-{case}", with_lesions, inserted.mask)


def _measure(name: str, volume: CTVolume, truth: np.ndarray | None, findings: Findings) -> CaseResult:
    classification = findings.classification
    inside = primary_hit = any_hit = None
    if truth is not None and truth.any():
        inside = float((truth & (findings.lung_labels > 0)).sum() / truth.sum())
        if classification is not None and classification.positive:
            hit = lesion_hit(truth, VoxelGrid.of(volume), findings.lesions)
            primary_hit, any_hit = hit.primary, hit.any
    return CaseResult(
        case=name,
        label=0 if truth is None else 1,
        probability=None if classification is None else round(classification.probability, 4),
        positive=None if classification is None else classification.positive,
        inserted_ml=0.0 if truth is None else round(float(truth.sum()) * volume.voxel_volume_ml, 1),
        lesion_voxels_in_lungs=None if inside is None else round(inside, 4),
        primary_hit=primary_hit,
        any_hit=any_hit,
        reported_lesions=len(findings.lesions),
    )


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    scored = [r for r in results if r.probability is not None]
    called = [r for r in results if r.label == 1 and r.positive]
    inclusion = [r.lesion_voxels_in_lungs for r in results if r.lesion_voxels_in_lungs is not None]
    return {
        "roc_auc": roc_auc([r.label for r in scored], [r.probability for r in scored]),
        "sensitivity": len(called) / max(1, sum(r.label == 1 for r in scored)),
        "clean_negative": all(not r.positive for r in results if r.label == 0),
        "lesion_voxels_in_lungs_min": min(inclusion) if inclusion else None,
        "lesion_voxels_in_lungs_mean": float(np.mean(inclusion)) if inclusion else None,
        "primary_hit_rate": (sum(bool(r.primary_hit) for r in called) / len(called)) if called else None,
        "any_hit_rate": (sum(bool(r.any_hit) for r in called) / len(called)) if called else None,
    }
