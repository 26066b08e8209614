"""Per-scan comparisons with mask ground truth: lesion hits and lung Dice.

Why masks on disk and SimpleITK: the truth comes as NIfTI files drawn on the source scan, and
``predict`` writes its lung map the same way, so both are compared in patient space. SimpleITK
reads NIfTI into LPS, the convention of the lesion centres in ``findings.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from inference.grid import VoxelGrid, point_in_mask
from inference.metrics import dice
from inference.predictions import LesionCentre, PredictionsError


@dataclass(frozen=True)
class LesionHit:
    """METHOD step 10: is the primary lesion's centre in the truth; is any reported lesion's?

    A scan called positive with no lesion reported misses on both counts.
    """

    primary: bool
    any: bool


def read_mask(path: Path) -> sitk.Image:
    """A 3-D label map; any reading problem is a :class:`PredictionsError` naming the file."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise PredictionsError(f"{path}: cannot read the mask: {error}") from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PredictionsError(f"{path}: a mask must be a 3-D single-channel image")
    return image


class LocatedLesion(Protocol):
    """A reported lesion: :class:`inference.types.Lesion` or a centre read from ``findings.json``."""

    @property
    def centre_mm(self) -> tuple[float, float, float]: ...

    @property
    def primary(self) -> bool: ...


def lesion_hit(truth: np.ndarray, grid: VoxelGrid, lesions: Sequence[LocatedLesion]) -> LesionHit:
    """The hit test against a truth array placed in patient space by ``grid``."""
    hits = [point_in_mask(truth, grid, lesion.centre_mm) for lesion in lesions]
    primary = [hit for hit, lesion in zip(hits, lesions, strict=True) if lesion.primary]
    return LesionHit(primary=bool(primary) and primary[0], any=any(hits))


def lesion_hit_in_file(lesions: Sequence[LesionCentre], mask_path: Path) -> LesionHit:
    """The hit test against a lesion mask on disk (any geometry: the centres are in mm)."""
    image = read_mask(mask_path)
    grid = VoxelGrid.from_geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return lesion_hit(sitk.GetArrayViewFromImage(image) > 0, grid, lesions)


def lung_dice(predicted_path: Path, reference_path: Path) -> float:
    """Dice of the predicted lung map (> 0) and the reference (> 0) on the prediction's grid.

    A reference drawn on another grid is resampled onto the prediction's with nearest
    neighbour, which keeps it a label map.
    """
    predicted, reference = read_mask(predicted_path), read_mask(reference_path)
    if not same_grid(predicted, reference):
        reference = sitk.Resample(
            reference, predicted, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, reference.GetPixelID()
        )
    return dice(sitk.GetArrayViewFromImage(predicted) > 0, sitk.GetArrayViewFromImage(reference) > 0)


def same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-3) -> bool:
    """Same size, and spacing, origin and direction equal within rounding."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tolerance_mm)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tolerance_mm)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-6)
    )
