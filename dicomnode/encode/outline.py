"""A lesion's key slice and its outline there, as an SR image region (SCOORD) takes it.

Viewers that list TID 1500 measurements (OHIF's SR display among them) show and jump to groups
with an image region: a polygon on one referenced slice. The key slice is the one where the
lesion is largest; the outline is the iso-line at 0.5 of its mask there, which runs along the
outer edges of the lesion's border pixels, in DICOM image coordinates (column, row; the top left
corner of the top left pixel is 0, 0).
"""

from __future__ import annotations

import contourpy
import numpy as np
from scipy import ndimage as ndi


def key_slice(mask: np.ndarray) -> int:
    """Index of the slice (axis 0) holding the most voxels of ``mask`` (the first of equals)."""
    areas = np.count_nonzero(mask, axis=(1, 2))
    if not areas.any():
        raise ValueError("the mask is empty: it has no key slice")
    return int(np.argmax(areas))


def key_planes(labels: np.ndarray) -> dict[int, tuple[int, np.ndarray]]:
    """For every label of a (slices, rows, columns) label map: its key slice and its mask on that
    slice (the slice's full size). One pass over the map, then each label's bounding box only."""
    planes = {}
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        slice_index = box[0].start + key_slice(mask)
        planes[index] = (slice_index, labels[slice_index] == index)
    return planes


def outline(plane: np.ndarray) -> np.ndarray:
    """The closed outline (first point repeated last) of the largest region of a 2-D mask, as
    (column, row) image coordinates, float32 (N, 2)."""
    padded = np.pad(plane.astype(np.float32), 1)  # a region at the edge still gets a closed line
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    if not lines:
        raise ValueError("the plane is empty: it has no outline")
    largest = max(lines, key=lambda line: abs(_signed_area(line)))
    points = largest - 1.0 + 0.5  # undo the padding; pixel centres lie at +0.5 in image coordinates
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points.astype(np.float32)


def _signed_area(line: np.ndarray) -> float:
    x, y = line[:, 0], line[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
