"""Slice geometry shared by the series rules and the volume builder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the image plane from ImageOrientationPatient (row x column cosines)."""
    row = np.asarray(orientation[:3], dtype=float)
    column = np.asarray(orientation[3:6], dtype=float)
    normal = np.cross(row, column)
    length = np.linalg.norm(normal)
    if length < 1e-6:
        raise ValueError(f"ImageOrientationPatient {list(orientation)} does not define a plane")
    return normal / length


def positions_along_normal(orientation: Sequence[float], positions: Sequence[Sequence[float]]) -> np.ndarray:
    """Distance of each slice (ImagePositionPatient) along the slice normal, in mm.

    Sorting slices by this value, not by InstanceNumber, is what puts them in space.
    """
    return np.asarray(positions, dtype=float) @ slice_normal(orientation)


def find_gaps(sorted_positions: np.ndarray, max_gap_factor: float) -> list[tuple[float, float, float]]:
    """Gaps between neighbouring slices larger than ``max_gap_factor`` x the median spacing.

    Returns ``(position before, position after, median spacing)`` for each gap: a missing slice.
    Positions closer than 1 % of the median spacing are duplicates and are not gaps.
    """
    steps = np.diff(sorted_positions)
    steps = steps[steps > 1e-3]
    if steps.size == 0:
        return []
    median = float(np.median(steps))
    gaps = []
    for before, after in zip(sorted_positions[:-1], sorted_positions[1:]):
        if after - before > max_gap_factor * median:
            gaps.append((float(before), float(after), median))
    return gaps
