"""Classical lung segmentation on the synthetic phantom: sides, volumes, holes, airways, axes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from inference.lungs import segment_lungs
from inference.types import CTVolume, LungLabel

# Fixtures (tests/inference/conftest.py): ``phantom`` (a Phantom: volume plus truth masks and
# analytic volumes) and ``make_phantom`` (its builder, for variants).


@pytest.fixture(scope="module")
def labels(phantom) -> np.ndarray:
    return segment_lungs(phantom.volume)


def swap_sides(labels: np.ndarray) -> np.ndarray:
    swapped = labels.copy()
    swapped[labels == LungLabel.RIGHT] = LungLabel.LEFT
    swapped[labels == LungLabel.LEFT] = LungLabel.RIGHT
    return swapped


def test_label_map_shape_and_values(phantom, labels: np.ndarray) -> None:
    assert labels.shape == phantom.volume.hu.shape
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {LungLabel.BACKGROUND, LungLabel.RIGHT, LungLabel.LEFT}


def test_right_label_is_on_the_lung_at_smaller_patient_x(phantom, labels: np.ndarray) -> None:
    # The phantom's right lung sits at x = -70 mm (LPS: +x is the patient's left).
    assert np.mean(labels[phantom.right] == LungLabel.RIGHT) > 0.98
    assert np.mean(labels[phantom.left] == LungLabel.LEFT) > 0.98


@pytest.mark.parametrize("side", [LungLabel.RIGHT, LungLabel.LEFT])
def test_volumes_match_the_ellipsoids(phantom, labels: np.ndarray, side: LungLabel) -> None:
    measured = float(np.sum(labels == side)) * phantom.volume.voxel_volume_ml
    expected = phantom.right_ml if side == LungLabel.RIGHT else phantom.left_ml
    assert measured == pytest.approx(expected, rel=0.03)


def test_dense_consolidation_at_the_wall_is_inside_the_lung(phantom, labels: np.ndarray) -> None:
    # Hole filling after a light closing: the blob touches the wall at one point only.
    assert np.mean(labels[phantom.consolidation] == LungLabel.RIGHT) > 0.95


def test_trachea_is_excluded(phantom, labels: np.ndarray) -> None:
    above_carina = phantom.trachea & _slices_above(phantom, phantom.carina_z_mm)[:, None, None]
    assert not np.any(labels[above_carina])
    # The main bronchi are removed down to where they meet the lungs in a slice; the short
    # stretch beside the lungs stays (about 13 % of the extrapulmonary airway here).
    assert np.mean(labels[phantom.trachea] > 0) < 0.2


def _slices_above(phantom, z_mm: float) -> np.ndarray:
    """Slices whose patient z lies above ``z_mm`` (the phantom's z axis points to the head)."""
    volume = phantom.volume
    z = volume.origin[2] + volume.spacing[2] * np.arange(volume.hu.shape[0])
    return z > z_mm


def test_mirrored_x_axis_swaps_the_labels(phantom, labels: np.ndarray) -> None:
    """Same array, but its x axis points to the patient's right: the sides must swap."""
    volume = phantom.volume
    mirrored = replace(
        volume,
        origin=(-volume.origin[0], volume.origin[1], volume.origin[2]),
        direction=np.diag([-1.0, 1.0, 1.0]),
    )
    assert np.array_equal(segment_lungs(mirrored), swap_sides(labels))


def test_coronally_stored_volume_gives_the_same_lungs(phantom, labels: np.ndarray) -> None:
    """Array slices along patient y, rows running feet-wards: geometry, not array order, decides."""
    volume = phantom.volume
    hu = volume.hu.transpose(1, 0, 2)[:, ::-1, :]  # (y, z reversed, x)
    top = volume.origin[2] + volume.spacing[2] * (volume.hu.shape[0] - 1)
    coronal = CTVolume(
        hu=np.ascontiguousarray(hu),
        spacing=(volume.spacing[0], volume.spacing[2], volume.spacing[1]),
        origin=(volume.origin[0], volume.origin[1], top),
        direction=np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    )
    result = segment_lungs(coronal).transpose(1, 0, 2)[::-1]
    assert np.mean(result == labels) > 0.999


def test_one_lung_is_reported_unseparated(make_phantom) -> None:
    phantom = make_phantom(lungs=("right",))
    labels = segment_lungs(phantom.volume)
    assert set(np.unique(labels)) == {LungLabel.BACKGROUND, LungLabel.UNSEPARATED}
    measured = float(np.sum(labels > 0)) * phantom.volume.voxel_volume_ml
    assert measured == pytest.approx(phantom.right_ml, rel=0.03)


def test_trunk_without_lungs_gives_background_only(make_phantom) -> None:
    phantom = make_phantom(lungs=(), bowel_gas=True)
    assert not np.any(segment_lungs(phantom.volume))


@pytest.mark.parametrize(
    "hu",
    [
        np.zeros((0, 8, 8), dtype=np.int16),
        np.full((1, 1, 1), -1000, dtype=np.int16),
        np.full((3, 16, 16), -1000, dtype=np.int16),
        np.full((3, 16, 16), 40, dtype=np.int16),
        np.full((4, 32, 32), -3024, dtype=np.int16),
    ],
    ids=["empty", "one-voxel", "all-air", "all-tissue", "all-padding"],
)
def test_degenerate_volumes_give_background_only(hu: np.ndarray) -> None:
    volume = CTVolume(hu=hu, spacing=(0.7, 0.7, 1.25), origin=(0.0, 0.0, 0.0))
    labels = segment_lungs(volume)
    assert labels.shape == hu.shape
    assert not np.any(labels)


def test_float_input_gives_the_same_result(phantom, labels: np.ndarray) -> None:
    as_float = replace(phantom.volume, hu=phantom.volume.hu.astype(np.float32))
    assert np.array_equal(segment_lungs(as_float), labels)


def test_airway_open_to_the_outside_still_finds_the_lungs(phantom, labels: np.ndarray) -> None:
    """Nose, mouth or a tracheostomy in the field of view connect the lungs to the outside air.

    Every lung voxel then touches the border in 3-D; the slice-wise fallback must find them.
    """
    volume = phantom.volume
    hu = volume.hu.copy()
    x = volume.origin[0] + volume.spacing[0] * np.arange(hu.shape[2])
    y = volume.origin[1] + volume.spacing[1] * np.arange(hu.shape[1])
    top = _slices_above(phantom, 90.0)
    channel = (np.abs(x) <= 3.0)[None, :] & (y <= -10.0)[:, None]  # trachea to the front
    hu[top] = np.where(channel, np.int16(-1000), hu[top])
    result = segment_lungs(replace(volume, hu=hu))
    assert np.mean(result == labels) > 0.999
