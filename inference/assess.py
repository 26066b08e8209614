"""Whether a scan can be assessed at all: a plausible, complete pair of lungs.

Why: DeCoVNet gives a probability for any input. On a head, an abdomen with the lung bases, a
scan that cuts the lungs off or a scout, that number means nothing, so the node reports "not
assessable" with the reason instead (SR and log). The limits are deliberately loose: the real
chest scans here have 2700-4300 ml of lung and the lungs' end slices hold at most 3 % of the
largest lung section; the abdomen example (lung bases only) has no lung at all.
"""

from __future__ import annotations

import numpy as np

from inference.grid import VoxelGrid
from inference.types import CTVolume, LungVolumes

MIN_TOTAL_LUNG_ML = 1000.0
"""Less is not a pair of adult lungs in full (lungs mostly outside the scan, or collapsed)."""
MIN_SIDE_FRACTION = 0.15
"""A separated lung smaller than this fraction of the total: only one lung in view."""
MAX_END_SLICE_FRACTION = 0.25
"""Lung section in the first or last slice, relative to the largest: above, the lungs are cut off."""
MIN_EXTENT_MM = 100.0
"""The lungs must span at least this much along z (a scout or a few slices do not)."""


def not_assessable_reason(volume: CTVolume, labels: np.ndarray, lungs: LungVolumes) -> str | None:
    """Why the scan cannot be assessed, or None when it can."""
    area = np.count_nonzero(labels, axis=(1, 2)).astype(float)
    if lungs.total_ml <= 0 or area.max() == 0:
        return "no lungs found (not a chest CT, or the lungs are outside the field of view)"
    present = np.flatnonzero(area)
    extent = (present[-1] - present[0] + 1) * float(volume.spacing[2])
    superior_first = not VoxelGrid.of(volume).superior_is_up
    for index, end in ((0, "top" if superior_first else "bottom"), (-1, "bottom" if superior_first else "top")):
        if area[index] > MAX_END_SLICE_FRACTION * area.max():
            return f"the lungs are cut off at the {end} of the scan"
    if extent < MIN_EXTENT_MM:
        return f"the lungs span only {extent:.0f} mm along the patient axis (at least {MIN_EXTENT_MM:.0f} mm needed)"
    if lungs.total_ml < MIN_TOTAL_LUNG_ML:
        return f"lung volume {lungs.total_ml:.0f} ml is too small for a pair of lungs (at least {MIN_TOTAL_LUNG_ML:.0f} ml)"
    if lungs.separated and min(lungs.right_ml or 0.0, lungs.left_ml or 0.0) < MIN_SIDE_FRACTION * lungs.total_ml:
        return "only one lung found"
    return None
