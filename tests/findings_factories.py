"""Findings on the synthetic phantom series, as the analysis would state them (test helpers).

Shared by the encoding tests and the tests that read the results back as viewers do.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from dicomnode.volume import SeriesVolume
from inference.types import AlgorithmFamily, Classification, Findings, Lesion, LungLabel, LungVolumes


def lung_mask(hu: np.ndarray) -> np.ndarray:
    """The phantom's lungs: air inside the body (air components not touching the image border)."""
    components, _ = ndimage.label(hu < -500)
    border = np.unique(np.concatenate([components[:, [0, -1], :].ravel(), components[:, :, [0, -1]].ravel()]))
    return (components > 0) & ~np.isin(components, border)


def findings_for(series: SeriesVolume, labels: np.ndarray, version: str = "1.0") -> Findings:
    """Findings with the volumes the analysis states: right/left only when no voxel is unseparated."""
    voxel_ml = series.volume.voxel_volume_ml
    count = {label: int(np.count_nonzero(labels == label)) * voxel_ml for label in LungLabel}
    separated = count[LungLabel.UNSEPARATED] == 0
    return Findings(
        lung_labels=labels,
        lungs=LungVolumes(
            right_ml=count[LungLabel.RIGHT] if separated else None,
            left_ml=count[LungLabel.LEFT] if separated else None,
            total_ml=count[LungLabel.RIGHT] + count[LungLabel.LEFT] + count[LungLabel.UNSEPARATED],
        ),
        algorithm_name="Test lung segmentation",
        algorithm_version=version,
        algorithm_family=AlgorithmFamily.MORPHOLOGICAL_OPERATIONS,
    )


def split_labels(series: SeriesVolume) -> np.ndarray:
    """Right lung at smaller patient x (the left half of the image), left lung at larger x."""
    lungs = lung_mask(series.volume.hu)
    labels = np.zeros(lungs.shape, dtype=np.uint8)
    right_half = np.arange(lungs.shape[2]) < lungs.shape[2] // 2
    labels[lungs & right_half] = LungLabel.RIGHT
    labels[lungs & ~right_half] = LungLabel.LEFT
    return labels


def save(dataset: Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def ball(shape: tuple[int, ...], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def assessed_findings(
    series: SeriesVolume, probability: float | None = 0.87, not_assessable: str | None = None
) -> Findings:
    """Separated lungs, two lesions (ground glass in the right lung, primary; consolidation in
    the left) and DeCoVNet's classification, as the analysis would state them."""
    base = findings_for(series, split_labels(series))
    shape = series.volume.hu.shape
    cz, cy, cx = (n // 2 for n in shape)
    offset = int(0.2 * shape[2])
    lesion_labels = np.zeros(shape, dtype=np.uint16)
    lesion_labels[ball(shape, (cz - 4, cy, cx - offset), 3.0)] = 1  # patient's right: smaller x
    lesion_labels[ball(shape, (cz + 6, cy + 5, cx + offset), 2.0)] = 2
    assert not np.any((lesion_labels > 0) & (base.lung_labels == 0))  # both lie inside the lungs
    voxel_ml = series.volume.voxel_volume_ml
    lesions = tuple(
        Lesion(
            label=label,
            score=score,
            volume_ml=float(np.count_nonzero(lesion_labels == label)) * voxel_ml,
            centre_mm=(0.0, 0.0, 0.0),
            mean_hu=mean_hu,
            primary=label == 1,
        )
        for label, score, mean_hu in ((1, 0.81, -620.0), (2, 0.55, -80.0))
    )
    return dataclasses.replace(
        base,
        algorithm_name="DeCoVNet",
        algorithm_version="2.0",
        algorithm_family=AlgorithmFamily.ARTIFICIAL_INTELLIGENCE,
        classification=None if probability is None else Classification(probability=probability, threshold=0.5),
        not_assessable=not_assessable,
        lesions=() if not_assessable else lesions,
        lesion_labels=None if not_assessable else lesion_labels,
    )
