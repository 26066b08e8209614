"""Voxel geometry and millimetre-true morphology shared by the analysis steps.

Why a grid object: the analysis permutes axes (to work slice-wise on axial planes), downsamples
and crops, and through all of it must still know where each voxel lies in the patient (which
lung is the right one comes from patient x, not from array order). Structuring sizes are given
in mm so that anisotropic voxels behave like isotropic ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from inference.types import CTVolume

SLICE_CONNECTIVITY = np.array(
    [np.zeros((3, 3)), [[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.zeros((3, 3))], dtype=bool
)
"""4-connectivity inside each slice (axis 0) and none across slices: labels slice by slice."""


@dataclass(frozen=True)
class VoxelGrid:
    """Maps array indices (numpy axis order) to patient LPS coordinates in mm.

    ``steps[a]`` is the patient displacement of one step along numpy axis ``a``.
    """

    origin: np.ndarray
    steps: np.ndarray

    @classmethod
    def of(cls, volume: CTVolume) -> VoxelGrid:
        return cls.from_geometry(volume.spacing, volume.origin, volume.direction)

    @classmethod
    def from_geometry(
        cls, spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray | Sequence[float]
    ) -> VoxelGrid:
        """From SimpleITK-ordered geometry: spacing and origin (x, y, z), direction 3x3 (columns)."""
        direction = np.asarray(direction, dtype=float).reshape(3, 3)
        spacing = np.asarray(spacing, dtype=float)
        # numpy axes (z, y, x) are image axes (2, 1, 0): direction columns 2, 1, 0.
        steps = np.stack([direction[:, k] * spacing[k] for k in (2, 1, 0)])
        return cls(np.asarray(origin, dtype=float), steps)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (mm) along each numpy axis."""
        return np.linalg.norm(self.steps, axis=1)

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.steps))) / 1000.0

    @property
    def pixel_cm2(self) -> float:
        """Area of one pixel of a slice (numpy axes 1 and 2)."""
        return float(np.linalg.norm(np.cross(self.steps[-2], self.steps[-1]))) / 100.0

    @property
    def superior_is_up(self) -> bool:
        """True when increasing the slice index (axis 0) moves towards the head (+z in LPS)."""
        return bool(self.steps[0, 2] > 0)

    def axial_order(self) -> tuple[int, int, int]:
        """Axis order putting the axis closest to patient z first, then the one closest to y."""
        unit = np.abs(self.steps / self.spacing[:, None])
        first = int(np.argmax(unit[:, 2]))
        rest = [a for a in range(3) if a != first]
        second = max(rest, key=lambda a: unit[a, 1])
        third = next(a for a in rest if a != second)
        return first, second, third

    def permuted(self, order: tuple[int, int, int]) -> VoxelGrid:
        return VoxelGrid(self.origin, self.steps[list(order)])

    def downsampled(self, factors: np.ndarray) -> VoxelGrid:
        """Grid of block means: index i covers the original indices i*f .. i*f+f-1."""
        origin = self.origin + ((factors - 1) / 2.0) @ self.steps
        return VoxelGrid(origin, self.steps * factors[:, None])

    def cropped(self, box: tuple[slice, ...]) -> VoxelGrid:
        """Grid of the crop ``array[box]``."""
        start = np.array([s.start or 0 for s in box], dtype=float)
        return VoxelGrid(self.origin + start @ self.steps, self.steps)

    def slice_grid(self, index: int) -> VoxelGrid:
        """2-D grid of slice ``index`` (axes 1 and 2)."""
        return VoxelGrid(self.origin + index * self.steps[0], self.steps[1:])

    def nearest_index(self, point_mm: Sequence[float]) -> np.ndarray:
        """Index (numpy axis order) of the voxel whose centre is nearest the patient point.

        The same voxel as SimpleITK's ``TransformPhysicalPointToIndex`` (reversed to z, y, x),
        save for points exactly halfway between two centres. It may lie outside the array.
        """
        offset = np.asarray(point_mm, dtype=float) - self.origin
        return np.rint(np.linalg.solve(self.steps.T, offset)).astype(int)

    def patient_x(self, mask: np.ndarray) -> np.ndarray:
        """Patient x (LPS: towards the patient's left) of every voxel in ``mask``."""
        x = np.full(mask.shape, self.origin[0])
        for axis, size in enumerate(mask.shape):
            shape = [1] * mask.ndim
            shape[axis] = size
            x = x + (np.arange(size) * self.steps[axis, 0]).reshape(shape)
        return x[mask]


def point_in_mask(mask: np.ndarray, grid: VoxelGrid, point_mm: Sequence[float]) -> bool:
    """Whether a patient-space point (LPS, mm) falls in a nonzero voxel of ``mask``.

    The lesion hit test (METHOD step 10): is the centre of a reported lesion inside the truth?
    A point outside the array is a miss.
    """
    index = grid.nearest_index(point_mm)
    if np.any(index < 0) or np.any(index >= np.array(mask.shape)):
        return False
    return bool(mask[tuple(index)])


def to_sitk(mask: np.ndarray, grid: VoxelGrid) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in grid.spacing[::-1]])
    return image


def signed_distance(mask: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """Outside the mask: distance in mm to the nearest mask voxel; inside: zero or negative.

    Call it on the complement for distances inside the mask. SimpleITK's Maurer distance map
    is multithreaded and much faster than scipy's EDT.
    """
    distance = sitk.SignedMaurerDistanceMap(
        to_sitk(mask, grid), insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return sitk.GetArrayFromImage(distance)


def close_mm(mask: np.ndarray, grid: VoxelGrid, radius_mm: float) -> np.ndarray:
    """Closing with a ball of ``radius_mm``, built from two distance maps.

    Dilation keeps what lies within the radius of the mask, erosion what lies farther than the
    radius from the background; this is several times faster than sitk's
    BinaryMorphologicalClosing with a ball kernel, and exact in mm for any spacing.
    """
    dilated = signed_distance(mask, grid) <= radius_mm
    return mask | (signed_distance(~dilated, grid) > radius_mm)


def fill_holes_slicewise(mask: np.ndarray, grid: VoxelGrid, max_hole_cm2: float) -> np.ndarray:
    """Fill, in every slice, the holes of at most ``max_hole_cm2``."""
    lab, n = ndi.label(~mask, structure=SLICE_CONNECTIVITY)
    area = np.bincount(lab.ravel(), minlength=n + 1) * grid.pixel_cm2
    fill = area <= max_hole_cm2
    fill[0] = False  # label 0 is the mask itself
    fill[np.unique(in_plane_border(lab))] = False
    return mask | fill[lab]


def in_plane_border(array: np.ndarray) -> np.ndarray:
    """Values on the four in-plane faces (first/last row and column of every slice)."""
    faces = (array[:, 0, :], array[:, -1, :], array[:, :, 0], array[:, :, -1])
    return np.concatenate([face.ravel() for face in faces])


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Index box of the nonzero voxels grown by ``margin``, clipped to the array (None if empty)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append(slice(max(0, int(hits[0]) - margin), min(mask.shape[axis], int(hits[-1]) + margin + 1)))
    return tuple(box)


def keep_large_components(mask: np.ndarray, voxel_ml: float, min_ml: float, min_relative: float) -> np.ndarray:
    """The components of ``mask`` of at least ``min_ml`` and ``min_relative`` times the largest."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    count = np.bincount(lab.ravel(), minlength=n + 1)
    count[0] = 0
    keep = (count >= min_relative * count.max()) & (count * voxel_ml >= min_ml)
    return keep[lab]


def components_touching(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` that contain a seed voxel."""
    lab, _ = ndi.label(mask)
    ids = np.unique(lab[seeds])
    return np.isin(lab, ids[ids > 0])
