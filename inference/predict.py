"""``python -m inference predict``: analyse one CT by hand and write what the node would report.

Why files and not DICOM: the engineer who retrains the models checks them on local scans
without a PACS. The output folder holds ``findings.json`` (the numbers of the SR), the masks as
NIfTI on the source's geometry (they overlay the source in any viewer) and ``overview.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from inference.api import Analyzer
from inference.io import read_volume, write_nifti
from inference.options import SHIPPED_WEIGHTS, AnalysisOptions
from inference.overview import caption, write_overview
from inference.types import CTVolume, Findings, Lesion

logger = logging.getLogger(__name__)

FINDINGS_JSON = "findings.json"
LUNGS_NIFTI = "lungs.nii.gz"
LESIONS_NIFTI = "lesions.nii.gz"
CAM_NIFTI = "cam.nii.gz"
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = findings_record(findings, volume, args.source, options.threshold)
    (out / FINDINGS_JSON).write_text(json.dumps(record, indent=2) + "\n")
    write_masks(volume, findings, out)
    write_overview(volume, findings, out / OVERVIEW_PNG)
    logger.info("%s; results in %s", caption(findings), out)
    return 0


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


def write_masks(volume: CTVolume, findings: Findings, out: Path) -> None:
    """The label maps and the CAM as NIfTI on the source geometry.

    A map the findings lack is removed from ``out``, so a rerun into the same folder never
    leaves a stale lesion mask beside new findings.
    """
    write_nifti(volume, findings.lung_labels.astype(np.uint8, copy=False), out / LUNGS_NIFTI)
    for array, name in ((findings.lesion_labels, LESIONS_NIFTI), (findings.cam, CAM_NIFTI)):
        if array is None:
            (out / name).unlink(missing_ok=True)
        else:
            write_nifti(volume, array, out / name)
