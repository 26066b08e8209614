"""Synthetic COVID-19 pneumonia: realistic lesions inserted into negative chest CTs.

Why: there are few real negative scans and no voxel labels for them; inserting lesions gives
labelled positives for the lung U-Net (the image gets dense pathology, the target lung mask stays
the original, so the net learns that consolidation inside the lung is lung), for DeCoVNet's
classifier, and for measuring the lesion hit rate on a held-out negative.

Shapes are real: the connected components of the 50 MosMed expert lesion masks, cached on a
~2 mm grid (:class:`LesionLibrary`). Where and how dense a lesion is follows the COVID-19 CT
literature (systematic review of 919 patients, Salehi et al., AJR 2020; Fleischner glossary,
Hansell et al., Radiology 2008):

- ground-glass opacity (GGO) in ~88 % of patients, consolidation in ~32 %: here a lesion is GGO
  with probability 0.7, otherwise consolidation, half of those mixed (GGO rim, dense core);
- GGO is hazy attenuation that leaves vessels and bronchial walls visible (mean about -700 to
  -450 HU), consolidation hides them (about -150 to +50 HU): the lesion raises the denoised
  image to its level, ``max(old, level + texture)``, so denser structures (vessels) stay as they
  are, and the scanner noise of the original is added back so a lesion is not a smooth patch;
- peripheral/subpleural distribution ~76 %, posterior involvement ~80 %, lower-lobe
  predominance, bilateral ~88 %: centres are drawn from lung voxels weighted by
  ``exp(-distance to the lung boundary / 10 mm)``, more weight posteriorly and inferiorly, and
  the second lesion goes to the other half of the lungs;
- 1 to 5 lesions, sizes varied by a random linear scale 0.6-1.6, flips and in-plane 90-degree
  rotations.

Everything works in array space (``[z, y, x]`` with ``spacing_zyx`` the voxel size along each
numpy axis), assuming axial slices as in DICOM: rows run anterior to posterior
(``posterior_axis_sign=+1``) and columns across the patient.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from inference.grid import bounding_box

LIBRARY_SPACING_MM = 2.0
"""Grid the library shapes are cached on: coarse enough to be cheap, fine enough for 0.5 ml."""
DEFAULT_MAX_COUNT = 5
"""With ``count=None`` a scan gets 1 to this many lesions."""
SCALE_RANGE = (0.6, 1.6)
"""Random linear scale of a shape (volume x0.2 to x4): the library's sizes, varied."""
PERIPHERAL_DECAY_MM = 10.0
"""Centre weight falls by 1/e per this distance from the lung boundary: "subpleural" means within
about a centimetre of the pleura. With 15 mm, large lesions reached so deep that on small lungs
their voxels lay no nearer the boundary than lung voxels on average."""
POSTERIOR_GAIN = 2.0
"""The most posterior lung voxel weighs 1 + this times the most anterior one."""
INFERIOR_GAIN = 1.0
"""Likewise for the lowest against the highest slice (lower-lobe predominance)."""
GGO_PROBABILITY = 0.7
"""Share of GGO lesions; the rest are consolidation, half of them mixed (GGO rim, dense core)."""
MIXED_PROBABILITY = 0.5
"""Share of mixed lesions among the consolidations."""
GGO_HU = (-700.0, -450.0)
"""Range of the mean attenuation of a GGO lesion (one value per lesion)."""
CONSOLIDATION_HU = (-150.0, 50.0)
"""Range of the mean attenuation of consolidation."""
CORE_FRACTION = (0.5, 0.8)
"""Share of a mixed lesion's volume (its deepest voxels) that is consolidation, so it is mostly
dense, which is what its kind "consolidation" says."""
TEXTURE_SIGMA_MM = (1.0, 2.0)
"""Correlation length of the lesion's texture (gaussian-filtered white noise)."""
TEXTURE_HU = (30.0, 60.0)
"""Standard deviation of that texture."""
EDGE_SIGMA_MM = 1.5
"""Soft edge: the blend weight is the lesion mask smoothed with this gaussian."""
DENOISE_SIGMA_MM = 1.5
"""Smoothing that separates the original's anatomy (raised to the lesion level) from its noise
(added back unchanged)."""
COARSE_MM = 6.0
"""Grid on which the centre weights are computed: they vary over ~15 mm, and a distance map at
full resolution would take most of the time budget."""
MIN_LUNG_ML = 20.0
"""Less lung than this (nothing found, a cut-off apex) gets no lesion."""
MIN_INSIDE_FRACTION = 0.25
"""A placement is kept when at least this share of the lesion lies in the lung and the volume;
a lesion mostly clipped away would not look like its shape any more."""
MAX_ATTEMPTS = 10
"""Placements tried per lesion before giving up on it."""


@dataclass(frozen=True)
class LesionShape:
    """One 3-D connected component of a MosMed lesion mask, resampled to ~2 mm.

    ``mask`` is cropped to the component; ``spacing_zyx`` is its voxel size (mm) along the numpy
    axes; ``source`` names the file and component, for tracing an odd-looking lesion.
    """

    mask: np.ndarray
    spacing_zyx: tuple[float, float, float]
    source: str

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum()) * float(np.prod(self.spacing_zyx)) / 1000.0


@dataclass(frozen=True)
class LesionLibrary:
    """Real lesion shapes to insert (MosMed: 0.9 mm pixels, 8 mm slices, values 0/1)."""

    shapes: tuple[LesionShape, ...]

    @classmethod
    def load(cls, folder: Path, min_ml: float = 0.5) -> LesionLibrary:
        """All components of at least ``min_ml`` from ``folder/*_mask.nii.gz``, in file order.

        Components are 26-connected: with 8 mm slices, a lesion continues diagonally from one
        slice to the next. Resampling to ~2 mm here makes every later placement cheap.
        """
        shapes = [
            shape
            for path in sorted(Path(folder).glob("*_mask.nii.gz"))
            for shape in _shapes_of(path, min_ml)
        ]
        return cls(tuple(shapes))

    def __len__(self) -> int:
        return len(self.shapes)


@dataclass(frozen=True)
class InsertedLesions:
    """The scan with lesions: ``hu`` (int16, a new array), ``mask`` (bool, lesion voxels in the
    lung), the number of lesions inserted and the kind of each ("ggo" or "consolidation")."""

    hu: np.ndarray
    mask: np.ndarray
    count: int
    kinds: tuple[str, ...]


def _shapes_of(path: Path, min_ml: float) -> Iterator[LesionShape]:
    """The components of one mask file, each resampled to the library grid."""
    image = sitk.ReadImage(str(path))
    spacing = np.array(image.GetSpacing()[::-1], dtype=float)
    mask = sitk.GetArrayViewFromImage(image) > 0
    box = bounding_box(mask)
    if box is None:
        return
    labels, _ = ndi.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    sizes_ml = np.bincount(labels.ravel()) * float(np.prod(spacing)) / 1000.0
    for index, found in enumerate(ndi.find_objects(labels), start=1):
        if found is None or sizes_ml[index] < min_ml:
            continue
        resampled, new_spacing = _resample_mask(labels[found] == index, spacing)
        if resampled.any():
            yield LesionShape(resampled, new_spacing, f"{path.name}#{index}")


def _resample_mask(
    mask: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Linear interpolation of the mask to ~2 mm, thresholded at 0.5 and cropped.

    Linear rather than nearest: between 8 mm slices the outline then tapers instead of stepping.
    """
    padded = np.pad(mask, 1).astype(np.float32)
    factors = spacing / LIBRARY_SPACING_MM
    resampled = _zoom(padded, factors) >= 0.5
    new_spacing = spacing * np.array(padded.shape) / np.array(resampled.shape)
    box = bounding_box(resampled)
    cropped = resampled[box] if box is not None else resampled[:0]
    return cropped, (float(new_spacing[0]), float(new_spacing[1]), float(new_spacing[2]))


def _zoom(array: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Linear resampling where each voxel is a cell (edges stay put), zeros outside."""
    return ndi.zoom(array, factors, order=1, grid_mode=True, mode="grid-constant", cval=0.0)


class _CentreSampler:
    """Draws lesion centres from lung voxels: peripheral, posterior and inferior ones preferred.

    The weights are computed on a strided ~6 mm sample of the lung; a drawn sample point is
    refined to a random lung voxel of its block at full resolution.
    """

    def __init__(
        self,
        lung: np.ndarray,
        spacing_zyx: np.ndarray,
        posterior_axis_sign: int,
        superior_is_up: bool,
    ) -> None:
        self.lung = lung
        self.step = np.maximum(1, np.round(COARSE_MM / spacing_zyx)).astype(int)
        offset = self.step // 2
        coarse = lung[tuple(slice(o, None, s) for o, s in zip(offset, self.step))]
        self.points = np.argwhere(coarse)
        self.weights = self._weights(
            coarse, spacing_zyx * self.step, posterior_axis_sign, superior_is_up
        )
        split = np.median(self.points[:, 2]) if len(self.points) else 0.0
        self.side = self.points[:, 2] >= split

    def _weights(
        self,
        coarse: np.ndarray,
        coarse_spacing: np.ndarray,
        posterior_axis_sign: int,
        superior_is_up: bool,
    ) -> np.ndarray:
        """exp(-d / decay) x (1 + gain x posterior position) x (1 + gain x inferior position).

        The lung is padded with background so that lung cut by the volume edge still has a
        boundary there.
        """
        if len(self.points) == 0:
            return np.zeros(0)
        distance = ndi.distance_transform_edt(np.pad(coarse, 1), sampling=coarse_spacing)
        d = distance[tuple(self.points.T + 1)]
        posterior = _position(self.points[:, 1], reverse=posterior_axis_sign < 0)
        inferior = _position(self.points[:, 0], reverse=superior_is_up)
        return (
            np.exp(-d / PERIPHERAL_DECAY_MM)
            * (1.0 + POSTERIOR_GAIN * posterior)
            * (1.0 + INFERIOR_GAIN * inferior)
        )

    def draw(self, rng: np.random.Generator, avoid_side: bool | None) -> tuple[np.ndarray, bool]:
        """A centre voxel and its half of the lungs, outside ``avoid_side`` when that has lung."""
        weights = self.weights
        if avoid_side is not None and np.any(weights[self.side != avoid_side] > 0):
            weights = np.where(self.side != avoid_side, weights, 0.0)
        index = int(rng.choice(len(weights), p=weights / weights.sum()))
        start = self.points[index] * self.step  # the block holding that (lung) sample point
        block = tuple(slice(int(a), int(a + s)) for a, s in zip(start, self.step))
        inside = np.argwhere(self.lung[block])
        voxel = start + inside[rng.integers(len(inside))]
        return voxel, bool(self.side[index])


def _position(index: np.ndarray, reverse: bool) -> np.ndarray:
    """Index scaled to 0..1 over its range (1 - that when ``reverse``)."""
    span = max(int(index.max() - index.min()), 1)
    t = (index - index.min()) / span
    return 1.0 - t if reverse else t


def _lesion_mask(
    shape: LesionShape, spacing_zyx: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The shape flipped, turned in-plane, scaled and resampled to the scan's grid (float 0..1).

    In-plane turns need square pixels, which the library has (its y and x spacings come from
    the same pixel size); the turn is done before resampling, so the scan's pixels may differ.
    """
    mask = shape.mask
    for axis in range(3):
        if rng.random() < 0.5:
            mask = np.flip(mask, axis)
    mask = np.rot90(mask, k=int(rng.integers(4)), axes=(1, 2))
    scale = rng.uniform(*SCALE_RANGE)
    factors = np.array(shape.spacing_zyx) * scale / spacing_zyx
    return _zoom(mask.astype(np.float32), factors)


@dataclass(frozen=True)
class _Placement:
    """Where a lesion's arrays (``local``) land in the volume (``box``)."""

    box: tuple[slice, ...]
    local: tuple[slice, ...]


def _place(
    size: tuple[int, ...], anchor: np.ndarray, centre: np.ndarray, volume_shape: tuple[int, ...]
) -> _Placement:
    """Put voxel ``anchor`` of an array of ``size`` on ``centre``; clip to the volume.

    The overlap is never empty: ``centre`` lies in the volume and ``anchor`` in the array.
    """
    start = centre - anchor
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.array(size), volume_shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    local = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    return _Placement(box, local)


def _choose_kind(rng: np.random.Generator, ggo_probability: float) -> str:
    """The kind of a lesion: ggo, consolidation, or mixed (reported as consolidation)."""
    if rng.random() < ggo_probability:
        return "ggo"
    return "mixed" if rng.random() < MIXED_PROBABILITY else "consolidation"


def _level(kind: str, core: np.ndarray | float, rng: np.random.Generator) -> np.ndarray | float:
    """Target attenuation: one GGO or consolidation level, or GGO blended into a dense core."""
    ggo = rng.uniform(*GGO_HU)
    if kind == "ggo":
        return ggo
    dense = rng.uniform(*CONSOLIDATION_HU)
    if kind == "consolidation":
        return dense
    return ggo + (dense - ggo) * core


def _core(inside: np.ndarray, spacing_zyx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft weight of a mixed lesion's dense core: its deepest 50-80 % of voxels."""
    depth = ndi.distance_transform_edt(inside, sampling=spacing_zyx)
    fraction = rng.uniform(*CORE_FRACTION)
    threshold = np.quantile(depth[inside], 1.0 - fraction)
    return ndi.gaussian_filter((depth > threshold).astype(np.float32), EDGE_SIGMA_MM / spacing_zyx)


def _texture(
    shape: tuple[int, ...], spacing_zyx: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Smooth correlated noise (unit variance rescaled to 30-60 HU): lesions are not flat."""
    sigma = rng.uniform(*TEXTURE_SIGMA_MM) / spacing_zyx
    noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return noise * (rng.uniform(*TEXTURE_HU) / max(float(noise.std()), 1e-6))


def _raise_to(
    old: np.ndarray, level: np.ndarray, weight: np.ndarray, spacing_zyx: np.ndarray
) -> np.ndarray:
    """Blend ``max(old, level)`` in by ``weight``, on the denoised image, noise added back.

    Taking the maximum keeps vessels (denser than GGO) visible; applying it to the smoothed
    original and adding ``old - smoothed`` back keeps the scanner's noise inside the lesion.
    """
    smooth = ndi.gaussian_filter(old, DENOISE_SIGMA_MM / spacing_zyx)
    return old + weight * np.maximum(level - smooth, 0.0)


def _insert_one(
    hu: np.ndarray,
    lung: np.ndarray,
    out_mask: np.ndarray,
    spacing_zyx: np.ndarray,
    library: LesionLibrary,
    sampler: _CentreSampler,
    rng: np.random.Generator,
    avoid_side: bool | None,
    ggo_probability: float,
) -> tuple[str, bool] | None:
    """Try to insert one lesion into ``hu``/``out_mask`` (in place); its kind and side, or None.

    Each attempt draws a new shape and centre; the lesion's mask voxel nearest its centroid is
    put on the centre, so the lesion always overlaps lung.
    """
    edge_sigma = EDGE_SIGMA_MM / spacing_zyx
    pad = np.ceil(3.0 * edge_sigma).astype(int)
    for _ in range(MAX_ATTEMPTS):
        shape = library.shapes[int(rng.integers(len(library)))]
        solid = np.pad(_lesion_mask(shape, spacing_zyx, rng), [(p, p) for p in pad])
        weight = ndi.gaussian_filter(solid, edge_sigma)
        inside = weight >= 0.5
        if not inside.any():
            continue
        centre, side = sampler.draw(rng, avoid_side)
        placement = _place(weight.shape, _anchor(inside), centre, hu.shape)
        lung_here = lung[placement.box]
        kept = inside[placement.local] & lung_here
        if kept.sum() < MIN_INSIDE_FRACTION * inside.sum():
            continue
        kind = _choose_kind(rng, ggo_probability)
        core = _core(inside, spacing_zyx, rng)[placement.local] if kind == "mixed" else 0.0
        level = _level(kind, core, rng)
        local_weight = weight[placement.local] * lung_here
        texture = _texture(local_weight.shape, spacing_zyx, rng)
        old = hu[placement.box].astype(np.float32)
        new = _raise_to(old, level + texture, local_weight, spacing_zyx)
        hu[placement.box] = np.clip(np.rint(new), -32768, 32767).astype(np.int16)
        out_mask[placement.box] |= kept
        return ("ggo" if kind == "ggo" else "consolidation"), side
    return None


def _anchor(inside: np.ndarray) -> np.ndarray:
    """The lesion voxel nearest the centroid (a crescent's centroid may lie outside it)."""
    voxels = np.argwhere(inside)
    centroid = voxels.mean(axis=0)
    return voxels[np.argmin(((voxels - centroid) ** 2).sum(axis=1))]


def insert_lesions(
    hu: np.ndarray,
    lung: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    library: LesionLibrary,
    rng: np.random.Generator,
    count: int | None = None,
    posterior_axis_sign: int = +1,
    superior_is_up: bool = True,
    ggo_probability: float = GGO_PROBABILITY,
) -> InsertedLesions:
    """Insert ``count`` lesions (default: random 1-5) into a copy of ``hu``, inside ``lung``.

    ``lung`` is any map whose non-zero voxels are lung (a bool mask or a LungLabel map).
    ``posterior_axis_sign`` is +1 when the row index grows towards the patient's back;
    ``superior_is_up`` when the slice index grows towards the head. ``ggo_probability`` is the
    share of ground-glass lesions (the literature's mix by default; 0 gives consolidations only,
    the conspicuous lesions a classifier's curriculum starts with). Lesions may overlap (their
    densities combine by maximum). With too little lung, or when no placement fits, fewer
    lesions (possibly none) are inserted and ``count`` says how many. Deterministic given
    ``rng``; the inputs are not modified.
    """
    if hu.shape != lung.shape:
        raise ValueError(f"hu {hu.shape} and lung {lung.shape} differ in shape")
    if len(library) == 0:
        raise ValueError("the lesion library is empty")
    spacing = np.asarray(spacing_zyx, dtype=float)
    is_lung = lung != 0
    out_hu = hu.astype(np.int16, copy=True)
    out_mask = np.zeros(hu.shape, dtype=bool)
    wanted = int(rng.integers(1, DEFAULT_MAX_COUNT + 1)) if count is None else int(count)
    lung_ml = float(is_lung.sum()) * float(np.prod(spacing)) / 1000.0
    if wanted <= 0 or lung_ml < MIN_LUNG_ML:
        return InsertedLesions(out_hu, out_mask, 0, ())
    sampler = _CentreSampler(is_lung, spacing, posterior_axis_sign, superior_is_up)
    if len(sampler.points) == 0:
        return InsertedLesions(out_hu, out_mask, 0, ())
    kinds: list[str] = []
    first_side: bool | None = None
    for _ in range(wanted):
        avoid = first_side if len(kinds) == 1 else None
        inserted = _insert_one(out_hu, is_lung, out_mask, spacing, library, sampler, rng, avoid, ggo_probability)
        if inserted is None:
            continue
        kinds.append(inserted[0])
        if first_side is None:
            first_side = inserted[1]
    return InsertedLesions(out_hu, out_mask, len(kinds), tuple(kinds))
