"""``python -m inference predict``: analyse one CT by hand and write what the node would report.

Why files and not DICOM: the engineer who retrains the models checks them on local scans
without a PACS. The output folder holds ``findings.json`` (the numbers of the SR), the masks as
NIfTI on the source's geometry (they overlay the source in any viewer) and ``overview.png``.

Unless ``--no-cam-levels``, it also holds the class activation maps of the lower feature levels
(:mod:`inference.multilevel_cam`: ``cam-low.nii.gz``, ``cam-mid.nii.gz``; ``cam.nii.gz`` is the
high level, the analysis's CAM), and the overview shows the three levels on the same sections.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.api import Analyzer
from inference.io import read_volume, write_nifti
from inference.multilevel_cam import LEVELS
from inference.options import SHIPPED_WEIGHTS, AnalysisOptions
from inference.overview import caption, write_overview
from inference.types import CTVolume, Findings, Lesion

logger = logging.getLogger(__name__)

FINDINGS_JSON = "findings.json"
LUNGS_NIFTI = "lungs.nii.gz"
LESIONS_NIFTI = "lesions.nii.gz"
CAM_NIFTI = "cam.nii.gz"
CAM_LEVEL_NIFTI = {"low": "cam-low.nii.gz", "mid": "cam-mid.nii.gz"}
"""The lower CAM levels' files; the high level is the analysis's CAM, `CAM_NIFTI`."""
OVERVIEW_PNG = "overview.png"

def predict_command(args: argparse.Namespace) -> int:
    """Analyse ``args.source`` and write the findings, masks and overview into ``args.out``."""
    options = AnalysisOptions(
        threshold=args.threshold,
        min_lesion_score=args.min_lesion_score,
        threads=args.threads,
        device=args.device,
        weights_dir=args.weights_dir or SHIPPED_WEIGHTS,
    )
    analyzer = Analyzer(options)  # before reading: missing weights fail fast
    volume = read_volume(args.source)
    findings = analyzer.analyze(volume)
    levels = cam_levels(analyzer, volume, findings) if args.cam_levels else {}
    out = Path(args.out)
    write_results(out, volume, findings, args.source, options.threshold, levels)
    write_overview(volume, findings, out / OVERVIEW_PNG, [(LEVELS[name], cam) for name, cam in levels.items()])
    logger.info("%s; results in %s", caption(findings), out)
    return 0


def cam_levels(analyzer: Analyzer, volume: CTVolume, findings: Findings) -> dict[str, np.ndarray]:
    """The CAM at each level (:data:`LEVELS`), uint8 on the source's slices; none when the
    classifier did not run. The high level is ``findings.cam`` itself, so that the overview
    shows exactly the map the analysis reported and localized with."""
    if findings.cam is None:
        return {}
    started = time.perf_counter()
    levels = analyzer.multilevel_cams(volume, findings.lung_labels)
    logger.info("CAM levels in %.1f s", time.perf_counter() - started)
    return {} if levels is None else {**levels, "high": findings.cam}


def write_results(
    out: Path,
    volume: CTVolume,
    findings: Findings,
    source: Path,
    threshold: float,
    levels: dict[str, np.ndarray] | None = None,
) -> None:
    """``findings.json`` and the masks in ``out`` (created): what ``evaluate`` reads back."""
    out.mkdir(parents=True, exist_ok=True)
    record = findings_record(findings, volume, source, threshold)
    (out / FINDINGS_JSON).write_text(json.dumps(record, indent=2) + "\n")
    write_masks(volume, findings, out, levels)


def findings_record(findings: Findings, volume: CTVolume, source: Path, threshold: float) -> dict[str, Any]:
    """The findings as plain JSON values, rounded to what the measurements can support.

    ``threshold`` is the run's, given even when no call was made (not assessable), so that the
    file says how the run was set up; probability and call are then null.
    """
    result = None if findings.not_assessable else findings.classification
    lungs = findings.lungs
    return {
        "probability": None if result is None else round(result.probability, 4),
        "positive": None if result is None else result.positive,
        "threshold": threshold,
        "not_assessable": findings.not_assessable,
        "lungs": {
            "right_ml": _round(lungs.right_ml, 1),
            "left_ml": _round(lungs.left_ml, 1),
            "total_ml": round(lungs.total_ml, 1),
        },
        "lesions": [_lesion_record(lesion) for lesion in findings.lesions],
        "lesion_volume_ml": round(findings.lesion_volume_ml, 2),
        "involvement_percent": _round(findings.involvement_percent, 2),
        "algorithm": {
            "name": findings.algorithm_name,
            "version": findings.algorithm_version,
            "family": findings.algorithm_family.value,
        },
        "source": str(source),
        "shape": [int(n) for n in volume.hu.shape],
        "spacing_mm": [round(float(s), 4) for s in volume.spacing],
    }


def _lesion_record(lesion: Lesion) -> dict[str, Any]:
    return {
        "label": lesion.label,
        "volume_ml": round(lesion.volume_ml, 2),
        "score": round(lesion.score, 3),
        "centre_mm": [round(float(c), 1) for c in lesion.centre_mm],
        "mean_hu": round(lesion.mean_hu, 1),
        "kind": lesion.kind,
        "primary": lesion.primary,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def write_masks(
    volume: CTVolume, findings: Findings, out: Path, levels: dict[str, np.ndarray] | None = None
) -> None:
    """The label maps, the CAM and the lower CAM ``levels`` (:func:`cam_levels`) as NIfTI on
    the source geometry.

    A map the findings lack is removed from ``out``, so a rerun into the same folder never
    leaves a stale lesion mask beside new findings.
    """
    write_nifti(volume, findings.lung_labels.astype(np.uint8, copy=False), out / LUNGS_NIFTI)
    levels = levels or {}
    maps = [(findings.lesion_labels, LESIONS_NIFTI), (findings.cam, CAM_NIFTI)]
    maps += [(levels.get(level), name) for level, name in CAM_LEVEL_NIFTI.items()]
    for array, name in maps:
        if array is None:
            (out / name).unlink(missing_ok=True)
        else:
            write_nifti(volume, array, out / name)
