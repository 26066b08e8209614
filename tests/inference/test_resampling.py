"""Sampling grids and the round trip back onto the original slices (METHOD steps 2, 3, 6)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.classifier_input import SLICE_MM, classifier_input
from inference.metrics import dice
from inference.grid import bounding_box
from inference.resampling import box_grid, map_to_uint8, sample, to_original, whole_grid, window
from inference.types import CTVolume


def test_window_maps_minus_1200_to_600_hu_onto_256_levels() -> None:
    values = window(np.array([-3000.0, -1200.0, -300.0, 600.0, 2000.0]))
    assert values.tolist() == pytest.approx([0.0, 0.0, 128 / 255, 1.0, 1.0])
    assert len(np.unique(window(np.linspace(-1200, 600, 5000)))) == 256


def test_a_mask_survives_the_round_trip_through_a_coarse_grid(phantom) -> None:
    lungs = phantom.right | phantom.left
    grid = whole_grid(phantom.volume, 2.0, 2.5, 16)
    coarse = sample(phantom.volume, grid, lungs.astype(np.float32))
    back = to_original(phantom.volume, grid, coarse) > 0.5
    assert back.shape == lungs.shape
    assert dice(back, lungs) > 0.97


def test_labels_map_back_exactly_on_an_aligned_grid(phantom) -> None:
    """A grid with the volume's own voxels must give the labels back voxel for voxel."""
    volume = phantom.volume
    labels = (phantom.right * 1 + phantom.left * 2).astype(np.uint8)
    nz, ny, nx = labels.shape
    grid = box_grid(volume, (slice(0, nz), slice(0, ny), slice(0, nx)), volume.spacing[2], ny, nx)
    assert grid.shape == labels.shape
    on_grid = sample(volume, grid, labels, labels=True)
    np.testing.assert_array_equal(on_grid, labels)
    np.testing.assert_array_equal(to_original(volume, grid, on_grid, labels=True), labels)


def test_the_classifier_input_is_the_lung_box_at_224_by_336(phantom) -> None:
    labels = (phantom.right | phantom.left).astype(np.uint8)
    prepared = classifier_input(phantom.volume, labels)
    assert prepared is not None
    box = bounding_box(labels > 0)
    extent_z = (box[0].stop - box[0].start) * phantom.volume.spacing[2]
    assert prepared.hu.shape == (int(np.ceil(extent_z / SLICE_MM)), 224, 336)
    tensor = prepared.tensor()
    assert tensor.shape == (1, 2, *prepared.hu.shape)
    assert 0.0 <= float(tensor[0, 0].min()) and float(tensor[0, 0].max()) <= 1.0
    assert set(np.unique(tensor[0, 1].numpy())) == {0.0, 1.0}
    # The box is tight: the mask reaches every side of the grid.
    lungs = prepared.lungs
    assert lungs[:, 0, :].any() or lungs[:, 1, :].any()
    assert lungs[:, :, :2].any() and lungs[:, :, -2:].any()
    # The consolidation inside the right lung is sampled where it lies: back on the original
    # slices, the dense voxels of the grid fall on the phantom's consolidation.
    dense = (prepared.hu > -300) & lungs
    back = to_original(phantom.volume, prepared.grid, dense.astype(np.float32)) > 0.5
    assert back.any()
    assert (back & phantom.consolidation).sum() / back.sum() > 0.5


def test_no_lungs_gives_no_classifier_input(phantom) -> None:
    assert classifier_input(phantom.volume, np.zeros(phantom.volume.hu.shape, np.uint8)) is None


def test_geometry_follows_a_reversed_slice_direction() -> None:
    """Slices stored feet-first (z direction flipped) still map back onto themselves."""
    hu = np.full((20, 32, 32), -1000, dtype=np.int16)
    hu[5:9, 10:20, 12:22] = 40
    direction = np.diag([1.0, 1.0, -1.0])
    volume = CTVolume(hu=hu, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 100.0), direction=direction)
    mask = hu > 0
    grid = whole_grid(volume, 1.0, 2.0, 16)
    back = to_original(volume, grid, sample(volume, grid, mask.astype(np.uint8), labels=True), labels=True)
    np.testing.assert_array_equal(back > 0, mask)


def test_mapping_back_only_near_the_map_gives_what_resampling_every_voxel_gives(phantom) -> None:
    """to_original resamples the original voxels near the map's nonzero part only; the voxels
    it leaves out must be the ones a resampling of the whole volume sets to 0."""
    import SimpleITK as sitk

    from inference.io import with_geometry

    volume = phantom.volume
    grid = whole_grid(volume, 2.0, 2.5, 16)
    lungs = sample(volume, grid, (phantom.right | phantom.left).astype(np.float32))
    labels = (sample(volume, grid, (phantom.right * 1 + phantom.left * 2).astype(np.uint8), labels=True)).astype(np.uint8)
    corner = np.zeros(lungs.shape, dtype=np.float32)
    corner[:2, :2, :2] = 1.0  # a map touching the grid's edge
    reference = with_geometry(
        sitk.Image([int(n) for n in volume.hu.shape[::-1]], sitk.sitkUInt8), volume.spacing, volume.origin, volume.direction
    )
    for array, is_labels in ((lungs, False), (labels, True), (corner, False)):
        interpolator = sitk.sitkNearestNeighbor if is_labels else sitk.sitkLinear
        everywhere = sitk.GetArrayFromImage(sitk.Resample(grid.image(array), reference, sitk.Transform(), interpolator, 0.0))
        near = to_original(volume, grid, array, labels=is_labels)
        assert near.dtype == everywhere.dtype and everywhere.any()
        if is_labels:
            # The cropped reference's origin is rounded differently: a voxel exactly halfway
            # between two grid voxels (this phantom's grids have such planes) may take the other.
            assert np.count_nonzero(near != everywhere) <= 1e-4 * near.size
        else:
            np.testing.assert_allclose(near, everywhere, atol=1e-6)
    assert not to_original(volume, grid, np.zeros_like(lungs)).any()


def test_maps_become_rounded_eight_bit_values() -> None:
    values = np.array([-0.5, 0.0, 0.5 / 255, 0.5, 1.0, 3.0], dtype=np.float32)
    assert map_to_uint8(values.copy()).tolist() == [0, 0, 0, 128, 255, 255]


def test_sampling_from_the_voxels_around_a_grid_equals_sampling_the_whole_volume(phantom) -> None:
    """sample() hands SimpleITK only the original voxels near the grid; the values are those
    of resampling the whole volume, for a grid over part of it and one over all of it."""
    import SimpleITK as sitk

    from inference.io import volume_to_image

    volume = phantom.volume
    labels = (phantom.right * 1 + phantom.left * 2).astype(np.uint8)
    part = box_grid(volume, bounding_box(labels), SLICE_MM, 48, 64)
    for grid in (part, whole_grid(volume, 2.0, 2.5, 16)):
        for array, is_labels, default in ((None, False, -1024.0), (labels, True, 0.0)):
            source = volume_to_image(volume, array)
            if not is_labels:
                source = sitk.Cast(source, sitk.sitkFloat32)
            interpolator = sitk.sitkNearestNeighbor if is_labels else sitk.sitkLinear
            whole = sitk.GetArrayFromImage(sitk.Resample(source, grid.reference(), sitk.Transform(), interpolator, default))
            np.testing.assert_array_equal(sample(volume, grid, array, labels=is_labels), whole)
