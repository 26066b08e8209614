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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.api import Analyzer
from inference.grid import VoxelGrid
from inference.io import read_volume
from inference.lungs import segment_lungs
from inference.metrics import roc_auc
from inference.synth import LesionLibrary, insert_lesions
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
    lungs = segment_lungs(volume) > 0
    grid = VoxelGrid.of(volume)
    z, y, x = volume.spacing[2], volume.spacing[1], volume.spacing[0]
    results = [_measure("clean", volume, None, analyzer.analyze(volume))]
    for case in range(cases):
        inserted = insert_lesions(
            volume.hu, lungs, (z, y, x), library, np.random.default_rng([seed, case]), superior_is_up=grid.superior_is_up
        )
        with_lesions = CTVolume(inserted.hu, volume.spacing, volume.origin, volume.direction)
        findings = analyzer.analyze(with_lesions)
        results.append(_measure(f"lesions-{case}", with_lesions, inserted.mask, findings))
        logger.info("%s", results[-1])
    return {"scan": scan.name, "seed": seed, "cases": [asdict(r) for r in results], **summarize(results)}


def _measure(name: str, volume: CTVolume, truth: np.ndarray | None, findings: Findings) -> CaseResult:
    classification = findings.classification
    inside = primary_hit = any_hit = None
    if truth is not None and truth.any():
        inside = float((truth & (findings.lung_labels > 0)).sum() / truth.sum())
        if classification is not None and classification.positive:
            hits = [_centre_inside(volume, truth, lesion.centre_mm) for lesion in findings.lesions]
            primary = [h for h, lesion in zip(hits, findings.lesions) if lesion.primary]
            primary_hit, any_hit = (primary[0] if primary else False), any(hits)
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


def _centre_inside(volume: CTVolume, truth: np.ndarray, centre_mm: tuple[float, float, float]) -> bool:
    """Whether the patient-space point falls in a voxel of ``truth``."""
    grid = VoxelGrid.of(volume)
    index = np.rint(np.linalg.solve(grid.steps.T, np.asarray(centre_mm) - grid.origin)).astype(int)
    if np.any(index < 0) or np.any(index >= np.array(truth.shape)):
        return False
    return bool(truth[tuple(index)])


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
