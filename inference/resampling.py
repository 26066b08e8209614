"""Sampling grids and the round trip between them and the original slices (METHOD steps 2 and 6).

Every model input is one SimpleITK resampling of the original volume onto a :class:`SampleGrid`
that shares the volume's orientation: the U-Net's grid covers each slice's whole field of view
at a coarser pixel size; the classifier's grid covers the lung bounding box with 224x336 pixels
per slice and a fixed slice spacing along z. Because the grids are real patient-space geometry,
any mask computed on them maps back onto the original slices with one more resampling
(:func:`to_original`), which is what keeps the SEG aligned with the source images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from inference.grid import VoxelGrid, bounding_box
from inference.io import with_geometry
from inference.types import CTVolume

OUTSIDE_HU = -1024.0
"""Value sampled outside the original field of view: air."""


@dataclass(frozen=True)
class SampleGrid:
    """A regular grid in patient space; ``size``, ``spacing``, ``origin`` in SimpleITK (x, y, z) order."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return self.size[2], self.size[1], self.size[0]

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def voxel_grid(self) -> VoxelGrid:
        return VoxelGrid.from_geometry(self.spacing, self.origin, self.direction)

    def reference(self) -> sitk.Image:
        return with_geometry(sitk.Image([int(n) for n in self.size], sitk.sitkUInt8), *self._geometry)

    def image(self, array: np.ndarray) -> sitk.Image:
        """``array`` (shape :attr:`shape`) as an image on this grid."""
        return with_geometry(sitk.GetImageFromArray(array), *self._geometry)

    @property
    def _geometry(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        return self.spacing, self.origin, self.direction


def box_grid(
    volume: CTVolume,
    box: tuple[slice, ...],
    slice_mm: float,
    height: int,
    width: int,
) -> SampleGrid:
    """Grid over the index box ``box`` (z, y, x slices) of ``volume``: ``height`` x ``width``
    pixels per slice and slices every ``slice_mm`` (at least one slice)."""
    (z, y, x) = box
    spacing = np.asarray(volume.spacing, dtype=float)
    extent = np.array([x.stop - x.start, y.stop - y.start, z.stop - z.start], dtype=float) * spacing
    depth = max(1, int(math.ceil(extent[2] / slice_mm)))
    new_spacing = extent / np.array([width, height, depth], dtype=float)
    # Voxel centres: the first new centre lies half a new voxel inside the box's outer edge.
    corner = np.array([x.start, y.start, z.start], dtype=float) - 0.5
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(volume.origin, dtype=float) + direction @ (corner * spacing + new_spacing / 2.0)
    return SampleGrid(
        size=(width, height, depth),
        spacing=tuple(float(s) for s in new_spacing),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in origin),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in direction.ravel()),
    )


def whole_grid(volume: CTVolume, pixel_mm: float, slice_mm: float, multiple: int) -> SampleGrid:
    """Grid over the whole volume with pixels of about ``pixel_mm`` (each side a multiple of
    ``multiple``) and slices every ``slice_mm`` or the original spacing, whichever is coarser."""
    nz, ny, nx = volume.hu.shape
    width = max(multiple, multiple * round(nx * volume.spacing[0] / pixel_mm / multiple))
    height = max(multiple, multiple * round(ny * volume.spacing[1] / pixel_mm / multiple))
    step = max(slice_mm, float(volume.spacing[2]))
    box = (slice(0, nz), slice(0, ny), slice(0, nx))
    return box_grid(volume, box, step, height, width)


def sample(volume: CTVolume, grid: SampleGrid, array: np.ndarray | None = None, *, labels: bool = False) -> np.ndarray:
    """``array`` (default: the HU; shape of ``volume.hu``) resampled onto ``grid``.

    Linear interpolation for intensities, nearest neighbour for ``labels``; outside the
    original field of view: air for HU, 0 for anything else. Only the original voxels around
    the grid are handed to SimpleITK (which copies what it is given): the classifier's grid
    covers the lungs, a fraction of the volume.
    """
    default = 0.0 if labels or array is not None else OUTSIDE_HU
    values = volume.hu if array is None else array
    grid_box = tuple(slice(0, n) for n in grid.shape)
    box = _index_box(volume, grid, grid_box)
    if box is None:  # the grid lies wholly outside the volume
        return np.full(grid.shape, default, dtype=values.dtype if labels else np.float32)
    source = with_geometry(
        sitk.GetImageFromArray(values[box]), volume.spacing, VoxelGrid.of(volume).cropped(box).origin, volume.direction
    )
    if labels:
        interpolator, pixel_type = sitk.sitkNearestNeighbor, sitk.sitkUnknown  # the labels' own type
    else:
        interpolator, pixel_type = sitk.sitkLinear, sitk.sitkFloat32  # interpolated in double either way
    out = sitk.Resample(source, grid.reference(), sitk.Transform(), interpolator, default, pixel_type)
    return sitk.GetArrayFromImage(out)


def to_original(volume: CTVolume, grid: SampleGrid, array: np.ndarray, *, labels: bool = False) -> np.ndarray:
    """``array`` on ``grid`` mapped back onto the original slices (shape of ``volume.hu``).

    Nearest neighbour for labels, linear otherwise; 0 outside the grid. Only the original
    voxels near ``array``'s nonzero part (:func:`original_box`) are resampled: elsewhere the
    result is 0 either way, and every full-resolution resampling of a 512x512x255 scan costs
    the better part of a second.
    """
    box = original_box(volume, grid, array)
    if box is None:
        return np.zeros(volume.hu.shape, dtype=array.dtype if labels else np.float32)
    part = resampled_in_box(volume, grid, array, box, labels=labels)
    out = np.zeros(volume.hu.shape, dtype=part.dtype)
    out[box] = part
    return out


def resampled_in_box(
    volume: CTVolume, grid: SampleGrid, array: np.ndarray, box: tuple[slice, ...], *, labels: bool = False
) -> np.ndarray:
    """``array`` on ``grid`` mapped onto the original voxels of ``box`` (z, y, x) only.

    For callers that go on working in the box: lungs, lesions and the CAM fill a fraction of
    the field of view, and every volume-sized temporary costs hundreds of MB on a long scan.
    """
    source = grid.image(array if labels else array.astype(np.float32))
    empty = sitk.Image([b.stop - b.start for b in box[::-1]], sitk.sitkUInt8)
    reference = with_geometry(empty, volume.spacing, VoxelGrid.of(volume).cropped(box).origin, volume.direction)
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return sitk.GetArrayFromImage(sitk.Resample(source, reference, sitk.Transform(), interpolator, 0.0))


#: Grid voxels kept around the nonzero part of a map resampled to the original slices (and
#: around a grid sampled from them): linear interpolation reaches one voxel, nearest neighbour
#: half of one. Not clipped to the grid: the grid's outer half voxel still interpolates its edge
#: voxels.
_MARGIN_VOXELS = 2


def original_box(volume: CTVolume, grid: SampleGrid, array: np.ndarray) -> tuple[slice, ...] | None:
    """The (z, y, x) index box of the original volume that can receive a nonzero value of
    ``array`` (shape ``grid.shape``) by resampling; None when ``array`` is all zero."""
    nonzero = bounding_box(array)
    return None if nonzero is None else _index_box(volume, grid, nonzero)


def _index_box(volume: CTVolume, grid: SampleGrid, grid_box: tuple[slice, ...]) -> tuple[slice, ...] | None:
    """The (z, y, x) index box of the original volume within reach of the grid voxels
    ``grid_box`` (grown by :data:`_MARGIN_VOXELS` grid voxels), clipped to the volume; None when
    that lies wholly outside it."""
    low = np.array([s.start for s in grid_box], dtype=float) - _MARGIN_VOXELS
    high = np.array([s.stop - 1 for s in grid_box], dtype=float) + _MARGIN_VOXELS
    corners = np.array([np.where(bits, high, low) for bits in np.ndindex(2, 2, 2)])
    on_grid = grid.voxel_grid
    original = VoxelGrid.of(volume)
    points = on_grid.origin + corners @ on_grid.steps
    index = np.linalg.solve(original.steps.T, (points - original.origin).T).T
    size = np.array(volume.hu.shape)
    start = np.clip(np.floor(index.min(axis=0)).astype(int), 0, size)
    stop = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, 0, size)
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def map_to_uint8(values: np.ndarray) -> np.ndarray:
    """A 0..1 map (float32) as 0..255, rounded; ``values`` is overwritten on the way.

    In place because a map on the original slices is the volume's size: the temporaries of
    the plain expression cost about a second per series.
    """
    np.clip(values, 0.0, 1.0, out=values)
    values *= np.float32(255.0)
    return np.rint(values, out=values).astype(np.uint8)


def to_original_uint8(volume: CTVolume, grid: SampleGrid, values: np.ndarray) -> np.ndarray:
    """A 0..1 map on ``grid`` (a CAM) on the original slices as 0..255 (:func:`map_to_uint8`),
    converted in its box only: the float map of a whole long scan would be the largest array
    of the analysis."""
    out = np.zeros(volume.hu.shape, dtype=np.uint8)
    box = original_box(volume, grid, values)
    if box is not None:
        out[box] = map_to_uint8(resampled_in_box(volume, grid, values, box))
    return out


def window(hu: np.ndarray) -> np.ndarray:
    """HU window [-1200, 600] to 8 bit, then to 0..1 (METHOD step 3), float32."""
    eight_bit = np.round((np.clip(hu, -1200.0, 600.0) + 1200.0) * (255.0 / 1800.0))
    return (eight_bit / 255.0).astype(np.float32)
