"""The one entry point of the analysis: :func:`analyze` turns a CT volume into findings.

The DICOM node calls nothing else in this package. Today the analysis is the classical lung
segmentation with lung volumes (METHOD step 4). The COVID-19 classifier (DeCoVNet) and the
weakly supervised lesion localization (issue 3) plug in here: models are loaded once, run on
the volume and the lung mask computed below, and their outputs become further optional
fields of :class:`Findings`, so that callers keep one call and one result type.
"""

from __future__ import annotations

import logging

import numpy as np

from inference.lungs import segment_lungs
from inference.types import AlgorithmFamily, CTVolume, Findings, LungLabel, LungVolumes
from inference.version import package_version

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "Unsupervised lung segmentation"


def analyze(volume: CTVolume) -> Findings:
    """Segment the lungs of ``volume`` and measure them.

    Never raises for a volume without lungs: the label map is then all background and the
    volumes are zero.
    """
    labels = segment_lungs(volume)
    lungs = lung_volumes(labels, volume.voxel_volume_ml)
    logger.info(
        "lungs: total %.0f ml, right %s ml, left %s ml",
        lungs.total_ml,
        _ml(lungs.right_ml),
        _ml(lungs.left_ml),
    )
    return Findings(
        lung_labels=labels,
        lungs=lungs,
        algorithm_name=ALGORITHM_NAME,
        algorithm_version=package_version(),
        algorithm_family=AlgorithmFamily.MORPHOLOGICAL_OPERATIONS,
    )


def lung_volumes(labels: np.ndarray, voxel_ml: float) -> LungVolumes:
    """Volumes in ml from voxel counts; right/left are None unless the lungs were separated."""
    counts = np.bincount(labels.ravel(), minlength=len(LungLabel))
    right = float(counts[LungLabel.RIGHT]) * voxel_ml
    left = float(counts[LungLabel.LEFT]) * voxel_ml
    total = right + left + float(counts[LungLabel.UNSEPARATED]) * voxel_ml
    separated = counts[LungLabel.UNSEPARATED] == 0 and right > 0 and left > 0
    return LungVolumes(
        right_ml=right if separated else None,
        left_ml=left if separated else None,
        total_ml=total,
    )


def _ml(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"
