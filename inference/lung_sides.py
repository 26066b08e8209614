"""Splitting a lung mask into the right and the left lung.

The lungs are often one component: they touch at the anterior or posterior junction, or the
airways still join them. Eroding the mask (thresholding its inner distance map at growing
radii) until two large cores appear side by side, then flooding the mask back from the cores
along the distance map, cuts through the narrowest junction. Which core is the right lung comes
from patient x (LPS: +x towards the patient's left), never from array order.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from inference.grid import VoxelGrid, components_touching, signed_distance
from inference.types import LungLabel

logger = logging.getLogger(__name__)

MAX_SEED_EROSION_MM = 30.0
"""Cores deeper than this are not looked for: lungs joined so broadly are left unseparated."""
MIN_SEED_FRACTION = 0.05
"""The smaller of two cores must reach this fraction of the larger to count as a lung."""
MIN_SIDE_FRACTION = 0.1
"""A split giving one side less than this fraction of the total is refused as implausible."""
SIDE_BY_SIDE = 0.5
"""Two cores are the two lungs when their centres lie this many mean widths apart in x."""


def split_right_left(lungs: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """Label map with RIGHT and LEFT, or everything UNSEPARATED when no credible split exists."""
    distance = None
    for radius in np.arange(0.0, MAX_SEED_EROSION_MM, float(grid.spacing.min())):
        if radius > 0 and distance is None:
            distance = signed_distance(~lungs, grid)  # inside the lungs: mm to the background
        core = lungs if radius == 0 else distance > radius
        if not core.any():
            break
        pair = _two_largest(core)
        if pair is None or not _side_by_side(*pair, grid):
            continue
        sides = _grow_back(lungs, pair, distance, grid)
        if sides is not None:
            logger.debug("lungs separated after %.1f mm erosion", radius)
            return _label_sides(sides, grid)
    logger.info("right and left lung could not be separated")
    return np.where(lungs, np.uint8(LungLabel.UNSEPARATED), np.uint8(0))


def _two_largest(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The two largest components, unless the second is a speck beside the first."""
    lab, n = ndi.label(mask)
    if n < 2:
        return None
    count = np.bincount(lab.ravel())
    count[0] = 0
    first, second = np.argsort(count)[::-1][:2]
    if count[second] < MIN_SEED_FRACTION * count[first]:
        return None
    return lab == first, lab == second


def _side_by_side(a: np.ndarray, b: np.ndarray, grid: VoxelGrid) -> bool:
    """True when ``a`` and ``b`` lie side by side in patient x, not one above the other.

    Erosion also cuts one lung into upper and lower parts; those overlap in x.
    """
    xa, xb = grid.patient_x(a), grid.patient_x(b)
    width = (np.ptp(np.percentile(xa, [5, 95])) + np.ptp(np.percentile(xb, [5, 95]))) / 2.0
    return abs(xa.mean() - xb.mean()) >= SIDE_BY_SIDE * max(width, 1e-6)


def _grow_back(
    lungs: np.ndarray,
    pair: tuple[np.ndarray, np.ndarray],
    distance: np.ndarray | None,
    grid: VoxelGrid,
) -> np.ndarray | None:
    """Give every lung voxel to core 1 or 2; None when the sizes are not credible.

    Voxels connected to a core are flooded by a watershed on the inverted distance map, so the
    cut runs through the narrowest junction; other components go to the nearer core in x.
    """
    a, b = pair
    markers = a.astype(np.uint8) + 2 * b.astype(np.uint8)
    if distance is None:  # no erosion: the cores are whole components
        grown = markers
    else:
        landscape = np.where(lungs, -distance, distance.max() + 1.0).astype(np.float32)
        flooded = sitk.MorphologicalWatershedFromMarkers(
            sitk.GetImageFromArray(landscape),
            sitk.GetImageFromArray(markers),
            markWatershedLine=False,
            fullyConnected=False,
        )
        reached = components_touching(lungs, a | b)
        grown = np.where(reached, sitk.GetArrayViewFromImage(flooded), 0).astype(np.uint8)
    _assign_rest_by_x(lungs, grown, grid)
    sizes = np.array([np.sum(grown == 1), np.sum(grown == 2)], dtype=float)
    if sizes.min() < MIN_SIDE_FRACTION * sizes.sum():
        logger.info("right/left split refused: sizes %s voxels", sizes.astype(int).tolist())
        return None
    return grown


def _assign_rest_by_x(lungs: np.ndarray, grown: np.ndarray, grid: VoxelGrid) -> None:
    """Give each lung component without a core to the core nearer in patient x (in place)."""
    rest = lungs & (grown == 0)
    if not rest.any():
        return
    centre_1, centre_2 = grid.patient_x(grown == 1).mean(), grid.patient_x(grown == 2).mean()
    lab, n = ndi.label(rest)
    for i in range(1, n + 1):
        part = lab == i
        x = grid.patient_x(part).mean()
        grown[part] = 1 if abs(x - centre_1) <= abs(x - centre_2) else 2


def _label_sides(grown: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """RIGHT for the part at smaller patient x (the patient's right in LPS), LEFT for the other."""
    one_is_right = grid.patient_x(grown == 1).mean() < grid.patient_x(grown == 2).mean()
    right, left = (1, 2) if one_is_right else (2, 1)
    labels = np.zeros(grown.shape, dtype=np.uint8)
    labels[grown == right] = LungLabel.RIGHT
    labels[grown == left] = LungLabel.LEFT
    return labels
