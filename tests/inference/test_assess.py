"""Not assessable is an answer: scans without a plausible, complete pair of lungs."""

from __future__ import annotations

import numpy as np

from inference.api import lung_volumes
from inference.assess import not_assessable_reason
from inference.types import CTVolume, LungLabel


def _reason(volume: CTVolume, labels: np.ndarray) -> str | None:
    return not_assessable_reason(volume, labels, lung_volumes(labels, volume.voxel_volume_ml))


def _labels(phantom) -> np.ndarray:
    return np.where(phantom.right, LungLabel.RIGHT, np.where(phantom.left, LungLabel.LEFT, 0)).astype(np.uint8)


def test_a_whole_pair_of_lungs_is_assessable(phantom) -> None:
    assert _reason(phantom.volume, _labels(phantom)) is None


def test_no_lung_is_not_assessable(phantom) -> None:
    reason = _reason(phantom.volume, np.zeros(phantom.volume.hu.shape, np.uint8))
    assert reason is not None and "no lungs" in reason


def test_lungs_cut_off_by_the_scan_are_not_assessable(phantom) -> None:
    """The phantom's slices increase towards the head: cropping the top half cuts the lungs there."""
    volume, labels = phantom.volume, _labels(phantom)
    half = volume.hu.shape[0] // 2
    cropped = CTVolume(volume.hu[:half], volume.spacing, volume.origin, volume.direction)
    assert _reason(cropped, labels[:half]) == "the lungs are cut off at the top of the scan"
    moved = np.asarray(volume.origin) + np.array([0.0, 0.0, half * volume.spacing[2]])
    lower = CTVolume(volume.hu[half:], volume.spacing, tuple(moved), volume.direction)
    assert _reason(lower, labels[half:]) == "the lungs are cut off at the bottom of the scan"


def test_a_few_slices_are_not_assessable(phantom) -> None:
    volume, labels = phantom.volume, _labels(phantom)
    middle = volume.hu.shape[0] // 2
    # Keep the top and bottom slices empty so that only the extent rule can object.
    few = np.zeros_like(labels[middle - 10 : middle + 10])
    few[5:15] = labels[middle - 5 : middle + 5]
    short = CTVolume(volume.hu[middle - 10 : middle + 10], volume.spacing, volume.origin, volume.direction)
    reason = _reason(short, few)
    assert reason is not None and "span only" in reason


def test_one_lung_alone_is_not_assessable(make_phantom) -> None:
    one = make_phantom(lungs=("right",))
    labels = np.where(one.right, LungLabel.RIGHT, 0).astype(np.uint8)
    labels[one.right & (np.indices(labels.shape)[2] > labels.shape[2] * 0.9)] = LungLabel.LEFT
    reason = _reason(one.volume, labels)
    assert reason is not None


def test_small_lungs_are_not_assessable(phantom) -> None:
    volume = phantom.volume
    tiny = CTVolume(volume.hu, (0.6, 0.6, 2.5), volume.origin, volume.direction)  # voxels 0.36x
    reason = _reason(tiny, _labels(phantom))
    assert reason is not None and "too small" in reason
