"""Training scans: CT volumes with their pseudo-label lung masks (METHOD step 4)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.grid import VoxelGrid
from inference.io import read_volume
from inference.lungs import segment_lungs
from inference.types import CTVolume

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingScan:
    name: str
    volume: CTVolume
    lungs: np.ndarray
    """Pseudo-label: the classical lung mask (bool, shape of the HU)."""

    @property
    def superior_is_up(self) -> bool:
        return VoxelGrid.of(self.volume).superior_is_up


def load_scans(paths: list[Path]) -> list[TrainingScan]:
    """Read each DICOM folder or NIfTI file and segment its lungs; scans without lungs are skipped."""
    scans = []
    for path in paths:
        volume = read_volume(path)
        lungs = segment_lungs(volume) > 0
        if not lungs.any():
            logger.warning("%s: no lungs found, not used for training", path)
            continue
        scans.append(TrainingScan(Path(path).name, volume, lungs))
        logger.info("%s: %s voxels, lungs %.0f ml", path, volume.hu.shape, lungs.sum() * volume.voxel_volume_ml)
    if paths and not scans:
        raise ValueError("none of the training scans has lungs")
    return scans


def spacing_zyx(volume: CTVolume) -> tuple[float, float, float]:
    x, y, z = volume.spacing
    return float(z), float(y), float(x)
