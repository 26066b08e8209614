"""Classical (unsupervised) lung segmentation: METHOD step 4.

Why a classical method: it needs no weights, it gives the pseudo-labels the U-Net of step 5 is
trained on, and it stays the fallback when no model is installed.

The steps run on a working copy downsampled to voxels of about 2 mm (3-D labelling and distance
maps at full resolution would take too long on a small CPU); only the boundary is redone at full
resolution:

1. air = HU below -320; values at or below -2000 (padding outside the field of view) count as air;
2. 3-D components of air that touch the in-plane border are outside air (around the body, in the
   table); when that leaves no lung (airways open to the outside through nose or mouth), the
   slice-wise variant is tried;
3. keep lung-like components: large enough, mostly parenchyma rather than the pure gas of bowel
   and stomach or the foam of the table;
4. remove trachea and main bronchi: the narrow tube followed down from the top lung slice;
5. fill holes slice by slice (vessels, dense lesions surrounded by lung), but not the large
   ones that are the liver or heart dome;
6. split right from left (:mod:`inference.lung_sides`);
7. light closing per lung, fill holes again, and map back to full resolution.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from inference.grid import (
    SLICE_CONNECTIVITY,
    VoxelGrid,
    bounding_box,
    close_mm,
    fill_holes_slicewise,
    in_plane_border,
    keep_large_components,
)
from inference.lung_sides import split_right_left
from inference.types import CTVolume

logger = logging.getLogger(__name__)

THRESHOLD_HU = -320.0
"""Lung parenchyma and air lie below, soft tissue above (METHOD step 4)."""
AIR_FLOOR_HU = -1024
"""Lower values (padding outside the field of view, -2000 and below, noise) are clipped to air."""
WORK_SPACING_MM = 2.0
"""Largest voxel size of the working copy."""
PURE_AIR_HU = -950.0
"""Below: air with no tissue in it (bowel gas); lung parenchyma lies above."""
DENSE_HU = -650.0
"""At or above: denser than aerated lung (table foam, partial volume of soft tissue)."""
MIN_LUNG_ML = 20.0
"""Smaller air components are never taken for lung."""
MIN_RELATIVE_SIZE = 0.1
"""Components smaller than this fraction of the largest lung-like one are dropped."""
FRAGMENT_ML = 1.0
"""Pieces of lung smaller than this, left once the airways are cut out, are dropped."""
MAX_PURE_AIR_FRACTION = 0.3
"""A component with more pure-air voxels is a gas pocket (stomach, bowel: 0.37-0.69 measured),
not lung (0.01-0.04 measured; severe emphysema could exceed it)."""
MAX_DENSE_FRACTION = 0.7
"""A component with this fraction of voxels at or above `DENSE_HU` is not lung: table foam
measured 0.83, lungs 0.08-0.21 (the COVID-19 scan with ground glass included)."""
TRACHEA_AREA_CM2 = (0.1, 8.0)
"""Cross-section of the trachea and main bronchi (at the larynx: small)."""
TRACHEA_GROWTH_CM2 = 3.0
"""A tube section may grow to twice the previous one or to this area, whichever is larger."""
TRACHEA_MAX_OFFSET_MM = 30.0
"""The trachea lies within this distance of the middle of the lungs in patient x."""
MAX_HOLE_CM2 = 15.0
"""Largest hole filled in a slice; the dome of liver or heart gives larger ones at once."""
CLOSING_RADIUS_MM = 3.0


def segment_lungs(volume: CTVolume) -> np.ndarray:
    """Label map of the lungs (:class:`LungLabel` values, uint8, shape of ``volume.hu``).

    Returns an all-background map when no lung is found (empty volume, abdomen-only scan);
    labels every lung voxel ``UNSEPARATED`` when right and left cannot be told apart.
    """
    hu = np.asarray(volume.hu)
    if hu.size == 0:
        return np.zeros(hu.shape, dtype=np.uint8)
    grid = VoxelGrid.of(volume)
    order = grid.axial_order()  # the slice-wise steps must run on axial planes
    axial, axial_grid = hu.transpose(order), grid.permuted(order)
    factors = _work_factors(axial.shape, axial_grid.spacing)
    work, work_grid = _downsample(axial, factors), axial_grid.downsampled(factors)
    found = _find_lungs(work, work_grid)
    if found is None:
        logger.info("no lungs found")
        return np.zeros(hu.shape, dtype=np.uint8)
    lungs, airway, box = found
    box_grid = work_grid.cropped(box)
    labels = _close_and_fill(split_right_left(lungs, box_grid), box_grid)
    full = _to_full_resolution(labels, airway, box, factors, axial)
    return np.ascontiguousarray(full.transpose(np.argsort(order)))


def _work_factors(shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    """Integer downsampling factor per axis giving voxels of at most `WORK_SPACING_MM`."""
    return np.array([max(1, min(n, int(WORK_SPACING_MM // s))) for n, s in zip(shape, spacing)])


def _downsample(hu: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Block means (float32), with values below `AIR_FLOOR_HU` clipped to it first.

    Summing strided views is several times faster than a reshape-and-mean over three axes.
    """
    f = [int(v) for v in factors]
    n = [size // k for size, k in zip(hu.shape, f)]
    total = np.zeros(n, dtype=np.float32)
    for dz in range(f[0]):
        for dy in range(f[1]):
            for dx in range(f[2]):
                block = hu[
                    dz : n[0] * f[0] : f[0], dy : n[1] * f[1] : f[1], dx : n[2] * f[2] : f[2]
                ]
                total += np.maximum(block, AIR_FLOOR_HU)
    total /= f[0] * f[1] * f[2]
    return total


def _find_lungs(
    work: np.ndarray, grid: VoxelGrid
) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]] | None:
    """Lung mask (airways removed, holes filled) and removed airway, both cropped to ``box``."""
    air = work < THRESHOLD_HU
    lungs = _select_lungs(_enclosed_air(air, slicewise=False), work, grid)
    if not lungs.any():
        lungs = _select_lungs(_enclosed_air(air, slicewise=True), work, grid)
        if lungs.any():
            logger.info("lungs found only slice-wise: airways open to the outside air?")
    if not lungs.any():
        return None
    box = bounding_box(lungs, margin=2)
    assert box is not None  # lungs.any() was checked
    lungs = lungs[box]
    airway = _airways(lungs, grid.cropped(box))
    lungs = keep_large_components(lungs & ~airway, grid.voxel_ml, FRAGMENT_ML, MIN_RELATIVE_SIZE)
    if not lungs.any():
        return None
    lungs = fill_holes_slicewise(lungs, grid, MAX_HOLE_CM2)
    logger.debug(
        "lung mask %.0f ml, airway removed %.0f ml",
        lungs.sum() * grid.voxel_ml,
        airway.sum() * grid.voxel_ml,
    )
    return lungs, airway, box


def _enclosed_air(air: np.ndarray, slicewise: bool) -> np.ndarray:
    """Air not connected to the in-plane border of the volume (in 3-D, or within each slice)."""
    lab, n = ndi.label(air, structure=SLICE_CONNECTIVITY if slicewise else None)
    keep = np.ones(n + 1, dtype=bool)
    keep[0] = False
    keep[np.unique(in_plane_border(lab))] = False
    return keep[lab]


def _select_lungs(candidates: np.ndarray, work: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """The lung-like components: large, mostly parenchyma (not gas pockets, not table foam)."""
    lab, n = ndi.label(candidates)
    if n == 0:
        return candidates
    ids, values = lab[candidates], work[candidates]
    count = np.bincount(ids, minlength=n + 1).astype(float)
    pure_air = np.bincount(ids[values < PURE_AIR_HU], minlength=n + 1) / np.maximum(count, 1)
    dense = np.bincount(ids[values >= DENSE_HU], minlength=n + 1) / np.maximum(count, 1)
    lung_like = (
        (count * grid.voxel_ml >= MIN_LUNG_ML)
        & (pure_air <= MAX_PURE_AIR_FRACTION)
        & (dense < MAX_DENSE_FRACTION)
    )
    lung_like[0] = False
    if not lung_like.any():
        return np.zeros_like(candidates)
    keep = lung_like & (count >= MIN_RELATIVE_SIZE * count[lung_like].max())
    logger.debug("lung components (ml): %s", np.round(count[keep] * grid.voxel_ml).tolist())
    return keep[lab]


def _airways(lungs: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """Trachea and extrapulmonary bronchi: the narrow tube tracked down from the top lung slice.

    Tracking the tube's cross-sections slice by slice works whatever the scanner's air
    calibration (the lumen reads -930 HU on the RICORD scan, close to lung), which a density
    threshold does not. A branch stops where it merges with a lung in the slice (its area
    jumps); at the carina the tube splits and both bronchi are followed.
    """
    airway = np.zeros_like(lungs)
    occupied = np.flatnonzero(lungs.any(axis=(1, 2)))
    top = int(occupied[-1] if grid.superior_is_up else occupied[0])
    current = _trachea_seed(lungs, top, grid)
    if current is None:
        return airway
    airway[top] = current
    feet = -1 if grid.superior_is_up else 1
    for z in range(top + feet, -1 if feet < 0 else lungs.shape[0], feet):
        lab, _ = ndi.label(lungs[z])
        previous = current.sum() * grid.pixel_cm2
        limit = min(TRACHEA_AREA_CM2[1], max(2 * previous, TRACHEA_GROWTH_CM2))
        following = np.zeros_like(current)
        for i in np.unique(lab[current & (lab > 0)]):
            blob = lab == i
            if blob.sum() * grid.pixel_cm2 <= limit:
                following |= blob
        if not following.any():
            break
        airway[z] = current = following
    logger.debug("airway tracked over %d slices", int(airway.any(axis=(1, 2)).sum()))
    return airway


def _trachea_seed(lungs: np.ndarray, top: int, grid: VoxelGrid) -> np.ndarray | None:
    """The trachea's cross-section in the top lung slice, or None (the scan starts below it).

    The trachea is a small blob near the middle of the lungs in patient x; lung apices lie
    laterally, and below the carina the top slice holds only large lung sections.
    """
    x = grid.patient_x(lungs)
    middle = (x.min() + x.max()) / 2.0
    plane = grid.slice_grid(top)
    lab, n = ndi.label(lungs[top])
    best, best_offset = None, TRACHEA_MAX_OFFSET_MM
    for i in range(1, n + 1):
        blob = lab == i
        area = blob.sum() * grid.pixel_cm2
        offset = abs(float(plane.patient_x(blob).mean()) - middle)
        if TRACHEA_AREA_CM2[0] <= area <= TRACHEA_AREA_CM2[1] and offset <= best_offset:
            best, best_offset = blob, offset
    return best


def _close_and_fill(labels: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """Light closing of each lung separately (so the two never merge), then fill holes again.

    Each lung is processed in its own bounding box: the distance maps are the costly part.
    """
    out = labels.copy()
    margin = int(np.ceil(CLOSING_RADIUS_MM / grid.spacing.min())) + 1
    for value in np.unique(labels[labels > 0]):
        box = bounding_box(labels == value, margin)
        assert box is not None  # value is one of the labels present
        closed = close_mm(labels[box] == value, grid, CLOSING_RADIUS_MM)
        mask = fill_holes_slicewise(closed, grid, MAX_HOLE_CM2)
        target = out[box]
        target[mask & (target == 0)] = value
    return out


def _to_full_resolution(
    labels: np.ndarray,
    airway: np.ndarray,
    box: tuple[slice, ...],
    factors: np.ndarray,
    hu: np.ndarray,
) -> np.ndarray:
    """Upsample the working labels (cropped to ``box``) and redo their boundary at full resolution.

    Interior working voxels stay lung whole (vessels, filled lesions); in the one-voxel band on
    either side of the boundary only full-resolution voxels below the threshold are lung. The
    removed airway stays out of the band.
    """
    inside = labels > 0
    interior = ndi.binary_erosion(inside, border_value=1)
    band = ndi.binary_dilation(inside) & ~interior & ~airway
    nearest = np.where(inside, labels, ndi.grey_dilation(labels, size=(3, 3, 3)))
    core = np.where(interior, labels, 0).astype(np.uint8)
    edge = np.where(band, nearest, 0).astype(np.uint8)

    low_shape = [n // int(f) for n, f in zip(hu.shape, factors)]
    region, index = [], []
    for axis, part in enumerate(box):
        f = int(factors[axis])
        stop = part.stop * f if part.stop < low_shape[axis] else hu.shape[axis]
        region.append(slice(part.start * f, stop))
        low_index = np.minimum(np.arange(part.start * f, stop) // f, low_shape[axis] - 1)
        index.append(low_index - part.start)
    up_core, up_edge = core[np.ix_(*index)], edge[np.ix_(*index)]
    is_air = hu[tuple(region)] < THRESHOLD_HU
    full = np.zeros(hu.shape, dtype=np.uint8)
    full[tuple(region)] = np.where(up_core > 0, up_core, np.where(is_air, up_edge, 0))
    return full
