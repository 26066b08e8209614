"""Weakly supervised lesion localization (METHOD step 9), on the classifier's grid.

1. CAM: the COVID-class weights of DeCoVNet's head applied to the block-2 features
   (:meth:`DeCoVNet.forward_with_cam`), with the orientation that training fixed
   (:mod:`inference.training.cam_orientation`), upsampled to the input grid, min-max
   normalised over the lungs (see :func:`upsample_cam` for why not ReLU first).
2. Candidates: the top `TOP_FRACTION` of CAM voxels inside the lungs, AND denser than
   `DENSE_HU` (lesions are denser than aerated lung), on slices with at least
   `MIN_LUNG_AREA_FRACTION` of the largest lung section; 3-D connected components of that.
3. R3dcc: a local-variance response over 7x7 in-plane windows of lung voxels (lesion
   texture and edges), its top `VARIANCE_TOP_FRACTION` inside the lungs, the largest 3-D
   component.
4. The candidate overlapping R3dcc most is the primary lesion (the paper's one lesion); every
   candidate of at least `MIN_CANDIDATE_ML` scoring at least the configured minimum is
   reported with its score (mean CAM), the `MAX_LESIONS` best of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

TOP_FRACTION = 0.05
DENSE_HU = -670.0
MIN_LUNG_AREA_FRACTION = 0.2
VARIANCE_WINDOW = 7
VARIANCE_TOP_FRACTION = 0.05
MIN_CANDIDATE_ML = 0.5
"""Smaller components are noise, not lesions."""
MAX_LESIONS = 10
"""At most this many candidates are reported (highest scores; the primary one always)."""
LOW_PERCENTILE = 1.0
"""The CAM's zero: this percentile of its values inside the lungs."""


@dataclass(frozen=True)
class Candidate:
    """A lesion candidate on the classifier grid: ``label`` in :attr:`Localization.labels`."""

    label: int
    score: float
    overlap_r3dcc: int
    primary: bool


@dataclass(frozen=True)
class Localization:
    cam: np.ndarray
    """(T, H, W) float32 in 0..1 on the classifier grid."""
    labels: np.ndarray
    """(T, H, W) int32: candidate ``i`` has value ``i`` (renumbered 1..n by descending score)."""
    candidates: tuple[Candidate, ...]


def upsample_cam(raw: torch.Tensor, shape: tuple[int, int, int], lungs: np.ndarray) -> np.ndarray:
    """Raw CAM (1, t, h, w) to ``shape`` (trilinear), min-max normalised over the lungs to 0..1.

    Why over the lungs and before any ReLU: the head's chained weights ignore its ReLUs and
    poolings, so the map's zero is not meaningful for a trained head (its values can all have one
    sign: before orientation, every value on the RICORD scan was negative and a ReLU left
    nothing); its ranking is, once oriented (:attr:`DeCoVNet.cam_orientation`).
    Normalising over the lungs puts the strongest COVID-19 evidence inside the lungs at 1.
    """
    cam = F.interpolate(raw[None].float(), size=shape, mode="trilinear", align_corners=False)[0, 0]
    values = cam.cpu().numpy().astype(np.float32)
    inside = values[lungs] if lungs.any() else values.ravel()
    # The low end at a percentile: a few extreme voxels must not squeeze the rest together.
    low, high = float(np.percentile(inside, LOW_PERCENTILE)), float(inside.max())
    if high <= low:
        return np.zeros(shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def localize(cam: np.ndarray, hu: np.ndarray, lungs: np.ndarray, min_score: float, voxel_ml: float) -> Localization:
    """Lesion candidates from ``cam``, ``hu`` and ``lungs`` (all (T, H, W) on one grid whose
    voxels hold ``voxel_ml`` each)."""
    empty = Localization(cam, np.zeros(cam.shape, dtype=np.int32), ())
    region = lungs & _substantial_slices(lungs)
    if not region.any():
        return empty
    hot = cam >= np.quantile(cam[region], 1.0 - TOP_FRACTION)
    labels, n = ndi.label(hot & region & (hu > DENSE_HU))
    if n == 0:
        return empty
    r3dcc = variance_component(hu, lungs)
    index = np.arange(1, n + 1)
    sizes = ndi.sum_labels(np.ones_like(cam), labels, index)
    scores = ndi.mean(cam, labels, index)
    overlaps = ndi.sum_labels(r3dcc, labels, index)
    keep = [i for i in range(n) if sizes[i] * voxel_ml >= MIN_CANDIDATE_ML and scores[i] >= min_score]
    if not keep:
        return empty
    primary = max(keep, key=lambda i: (overlaps[i], scores[i]))
    order = sorted(keep, key=lambda i: -scores[i])[:MAX_LESIONS]
    if primary not in order:
        order[-1] = primary
    renumbered = np.zeros(n + 1, dtype=np.int32)
    candidates = []
    for new, i in enumerate(order, start=1):
        renumbered[i + 1] = new
        candidates.append(Candidate(new, float(scores[i]), int(overlaps[i]), i == primary))
    return Localization(cam, renumbered[labels], tuple(candidates))


def _substantial_slices(lungs: np.ndarray) -> np.ndarray:
    """(T, 1, 1) mask of slices whose lung area is at least `MIN_LUNG_AREA_FRACTION` of the largest."""
    area = lungs.sum(axis=(1, 2))
    return (area >= MIN_LUNG_AREA_FRACTION * max(int(area.max()), 1))[:, None, None]


def variance_component(hu: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """R3dcc: the largest 3-D component of high local variance inside the lungs."""
    if not lungs.any():
        return np.zeros(lungs.shape, dtype=bool)
    # Window statistics over lung voxels only, so the lung's own edge (lung against chest
    # wall, 900 HU apart) does not pass for texture.
    inside = lungs.astype(np.float32)
    values = np.clip(hu, -1200.0, 600.0).astype(np.float32) * inside
    size = (1, VARIANCE_WINDOW, VARIANCE_WINDOW)
    weight = np.maximum(ndi.uniform_filter(inside, size), 1e-6)
    mean = ndi.uniform_filter(values, size) / weight
    variance = ndi.uniform_filter(values * values, size) / weight - mean * mean
    strong = lungs & (variance >= np.quantile(variance[lungs], 1.0 - VARIANCE_TOP_FRACTION))
    labels, n = ndi.label(strong)
    if n == 0:
        return strong
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))
