"""Lesion localization (METHOD step 9) on small synthetic grids."""

from __future__ import annotations

import numpy as np
import torch

from inference.localize import MAX_LESIONS, localize, upsample_cam, variance_component

SHAPE = (24, 64, 96)


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lungs of aerated tissue with two dense lesions; the CAM peaks on the first."""
    rng = np.random.default_rng(0)
    lungs = np.zeros(SHAPE, dtype=bool)
    lungs[2:22, 8:56, 6:44] = True
    lungs[2:22, 8:56, 52:90] = True
    hu = np.where(lungs, -850.0, 40.0) + rng.normal(0, 20, SHAPE)
    first, second = _ball((12, 30, 20), 6) & lungs, _ball((10, 40, 70), 4) & lungs
    hu[first] = -450.0 + rng.normal(0, 60, int(first.sum()))
    hu[second] = -100.0
    z, y, x = np.indices(SHAPE)
    cam = np.exp(-((z - 12) ** 2 + (y - 30) ** 2 + (x - 20) ** 2) / (2 * 8.0**2))
    cam += 0.6 * np.exp(-((z - 10) ** 2 + (y - 40) ** 2 + (x - 70) ** 2) / (2 * 6.0**2))
    return hu.astype(np.float32), lungs, (cam / cam.max()).astype(np.float32), first


def test_candidates_lie_on_dense_tissue_where_the_cam_is_hot() -> None:
    hu, lungs, cam, first = _scene()
    found = localize(cam, hu, lungs, min_score=0.0, voxel_ml=0.01)
    assert len(found.candidates) >= 2, "both CAM peaks on dense tissue are reported"
    best = found.labels == found.candidates[0].label
    assert (best & first).sum() / best.sum() > 0.9
    assert found.candidates[0].score > found.candidates[1].score
    assert not np.any((found.labels > 0) & ~lungs)
    assert sum(c.primary for c in found.candidates) == 1


def test_the_primary_lesion_is_the_one_overlapping_r3dcc() -> None:
    hu, lungs, cam, first = _scene()
    r3dcc = variance_component(hu, lungs)
    found = localize(cam, hu, lungs, min_score=0.0, voxel_ml=0.01)
    primary = next(c for c in found.candidates if c.primary)
    assert primary.overlap_r3dcc == max(c.overlap_r3dcc for c in found.candidates)
    assert primary.overlap_r3dcc == int((r3dcc & (found.labels == primary.label)).sum())


def test_r3dcc_finds_the_textured_lesion() -> None:
    hu, lungs, _, first = _scene()
    r3dcc = variance_component(hu, lungs)
    assert r3dcc.any() and r3dcc.sum() < lungs.sum() * 0.1
    # The noisy ground glass and its edge are the most textured region inside the lungs.
    grown = np.zeros_like(first)
    grown[1:-1, 1:-1, 1:-1] = _ball((12, 30, 20), 9)[1:-1, 1:-1, 1:-1]
    assert (r3dcc & grown).sum() / r3dcc.sum() > 0.5


def test_a_minimum_score_drops_weak_candidates() -> None:
    hu, lungs, cam, _ = _scene()
    every = localize(cam, hu, lungs, min_score=0.0, voxel_ml=0.01).candidates
    strong = localize(cam, hu, lungs, min_score=0.9, voxel_ml=0.01).candidates
    assert len(strong) < len(every)
    assert all(c.score >= 0.9 for c in strong)


def test_no_lung_gives_no_candidates() -> None:
    hu, _, cam, _ = _scene()
    found = localize(cam, hu, np.zeros(SHAPE, dtype=bool), min_score=0.0, voxel_ml=0.01)
    assert found.candidates == () and not found.labels.any()


def test_the_cam_is_upsampled_and_normalised_over_the_lungs() -> None:
    raw = torch.tensor([[[[-3.0, -2.5], [-1.0, -2.0]]]])  # (1, t=1, h=2, w=2): all negative
    lungs = np.zeros((2, 4, 4), dtype=bool)
    lungs[:, :, :2] = True  # the left half of the grid
    cam = upsample_cam(raw, (2, 4, 4), lungs)
    assert cam.shape == (2, 4, 4)
    assert cam[lungs].min() == 0.0 and cam[lungs].max() == 1.0
    assert cam[0, 3, 0] == 1.0  # the least negative raw value inside the lungs is the peak
    assert 0.0 <= cam.min() and cam.max() <= 1.0


def test_small_candidates_are_dropped_and_the_count_is_capped() -> None:
    hu, lungs, cam, _ = _scene()
    # With huge voxels every candidate is big enough; with tiny ones none is.
    assert localize(cam, hu, lungs, min_score=0.0, voxel_ml=1e-6).candidates == ()
    many = localize(cam, hu, lungs, min_score=0.0, voxel_ml=1.0).candidates
    assert 0 < len(many) <= MAX_LESIONS
