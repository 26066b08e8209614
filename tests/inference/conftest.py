"""Fixtures for the inference tests: a seeded synthetic chest phantom and the real CT series.

The phantom is built in patient (LPS) millimetres so that its truth is analytic: two lung
ellipsoids (the right one at negative x, i.e. on the patient's right, and larger, so a swap
cannot go unnoticed), vessels inside them, a dense consolidation touching the right lung's
wall from inside, and a trachea with two main bronchi.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import SHARED_DATA, require_path
from inference.io import read_volume
from inference.types import CTVolume

CT = SHARED_DATA / "ct"

SHAPE = (80, 264, 360)  # z, y, x
SPACING = (1.0, 1.0, 2.5)  # x, y, z mm: in-plane 1 mm so the 2 mm working copy is exercised
ORIGIN = tuple(-(n - 1) * s / 2.0 for n, s in zip(SHAPE[::-1], SPACING))  # centred on 0

RIGHT_CENTRE, RIGHT_AXES = (-70.0, 0.0, 0.0), (48.0, 62.0, 80.0)
LEFT_CENTRE, LEFT_AXES = (70.0, 0.0, 0.0), (45.0, 58.0, 72.0)
CONSOLIDATION_RADIUS = 12.0
# Internally tangent to the right lung's lateral wall at z = 0.
CONSOLIDATION_CENTRE = (RIGHT_CENTRE[0] - RIGHT_AXES[0] + CONSOLIDATION_RADIUS, 0.0, 0.0)
CARINA = (0.0, -10.0, 30.0)


def ellipsoid_ml(axes: tuple[float, float, float]) -> float:
    return 4.0 / 3.0 * np.pi * float(np.prod(axes)) / 1000.0


@dataclass(frozen=True)
class Phantom:
    """A synthetic chest CT with its truth masks (array space, like ``volume.hu``)."""

    volume: CTVolume
    right: np.ndarray
    left: np.ndarray
    consolidation: np.ndarray
    trachea: np.ndarray
    """Airway outside the lungs: trachea and the extrapulmonary parts of the bronchi."""
    right_ml: float
    """Analytic volume of the right lung ellipsoid (0 when absent); likewise ``left_ml``."""
    left_ml: float
    carina_z_mm: float = CARINA[2]


def _coordinates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient x, y, z (mm) of every voxel, broadcastable to SHAPE."""
    z = ORIGIN[2] + SPACING[2] * np.arange(SHAPE[0], dtype=np.float32)[:, None, None]
    y = ORIGIN[1] + SPACING[1] * np.arange(SHAPE[1], dtype=np.float32)[None, :, None]
    x = ORIGIN[0] + SPACING[0] * np.arange(SHAPE[2], dtype=np.float32)[None, None, :]
    return x, y, z


def _inside_ellipsoid(xyz, centre, axes) -> np.ndarray:
    return sum(((c - m) / a) ** 2 for c, m, a in zip(xyz, centre, axes)) <= 1.0


def _near_segment(xyz, start, end, radius: float) -> np.ndarray:
    """Voxels within ``radius`` of the segment start-end (a tube with round ends)."""
    start, end = np.asarray(start, np.float32), np.asarray(end, np.float32)
    d = end - start
    t = sum((c - s) * v for c, s, v in zip(xyz, start, d)) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return sum((c - (s + t * v)) ** 2 for c, s, v in zip(xyz, start, d)) <= radius**2


def build_phantom(
    lungs: tuple[str, ...] = ("right", "left"), bowel_gas: bool = False, seed: int = 0
) -> Phantom:
    """The phantom with the named lungs (``()`` gives a trunk with no lung at all).

    ``bowel_gas`` adds a 65 ml pocket of pure air (stomach, colon), which must not pass for lung.
    """
    rng = np.random.default_rng(seed)
    xyz = _coordinates()
    x, y, _ = xyz
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    hu[np.broadcast_to((x / 160.0) ** 2 + (y / 115.0) ** 2 <= 1.0, SHAPE)] = 40.0

    absent = np.zeros(SHAPE, dtype=bool)
    right = _inside_ellipsoid(xyz, RIGHT_CENTRE, RIGHT_AXES) if "right" in lungs else absent
    left = _inside_ellipsoid(xyz, LEFT_CENTRE, LEFT_AXES) if "left" in lungs else absent
    hu[right | left] = -850.0
    for centre, axes, mask in ((RIGHT_CENTRE, RIGHT_AXES, right), (LEFT_CENTRE, LEFT_AXES, left)):
        for offset in ((0, 0, 30), (10, -20, -20), (-15, 15, 0), (0, 20, -45), (20, 10, 40)):
            vessel = _inside_ellipsoid(xyz, np.add(centre, offset), (4.0, 4.0, 4.0)) & mask
            hu[vessel] = 40.0
    blob = _inside_ellipsoid(xyz, CONSOLIDATION_CENTRE, (CONSOLIDATION_RADIUS,) * 3)
    consolidation = blob & right
    hu[consolidation] = rng.uniform(-100.0, 40.0, size=int(consolidation.sum()))

    airway = np.zeros(SHAPE, dtype=bool)
    if lungs:
        airway = _near_segment(xyz, CARINA, (0.0, -10.0, 200.0), 8.0)
        for side in (-1.0, 1.0):
            airway |= _near_segment(xyz, CARINA, (45.0 * side, -10.0, -10.0), 6.0)
    hu[airway] = -1000.0
    if bowel_gas:
        hu[_inside_ellipsoid(xyz, (0.0, 40.0, -40.0), (25.0, 25.0, 25.0))] = -1000.0
    hu += rng.normal(0.0, 15.0, size=SHAPE).astype(np.float32)
    hu[np.broadcast_to(x**2 + y**2 > 178.0**2, SHAPE)] = -3024.0  # outside the field of view
    volume = CTVolume(hu=hu.astype(np.int16), spacing=SPACING, origin=ORIGIN, direction=np.eye(3))
    return Phantom(
        volume,
        right,
        left,
        consolidation,
        airway & ~(right | left),
        right_ml=ellipsoid_ml(RIGHT_AXES) if "right" in lungs else 0.0,
        left_ml=ellipsoid_ml(LEFT_AXES) if "left" in lungs else 0.0,
    )


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return build_phantom()


@pytest.fixture(scope="session")
def make_phantom() -> Callable[..., Phantom]:
    return build_phantom


@pytest.fixture(scope="session")
def real_series() -> Callable[[str], CTVolume]:
    """Reads ``../shared/data/ct/<name>`` (cached: several tests use the same scan)."""
    cache: dict[str, CTVolume] = {}

    def load(name: str) -> CTVolume:
        if name not in cache:
            cache[name] = read_volume(require_path(CT / name))
        return cache[name]

    return load


@pytest.fixture(scope="session")
def real_nifti() -> Callable[[str], CTVolume]:
    """Reads the image or mask ``../shared/data/ct/<relative path>`` (NIfTI) as a CTVolume."""

    def load(relative: str) -> CTVolume:
        return read_volume(require_path(CT / relative))

    return load
