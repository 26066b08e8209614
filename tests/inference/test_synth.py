"""Lesion insertion (inference.synth): real MosMed shapes placed like COVID-19 pneumonia.

Runs on the synthetic phantom (tests/inference/conftest.py: two lung ellipsoids with vessels,
about -850 HU, 1 x 1 x 2.5 mm voxels) with the lesion shapes from ../shared/data.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import SHARED_DATA, require_path
from inference.grid import VoxelGrid, signed_distance
from inference.synth import InsertedLesions, LesionLibrary, insert_lesions

MOSMED = SHARED_DATA / "lesion-masks" / "mosmed"


@pytest.fixture(scope="module")
def library() -> LesionLibrary:
    return LesionLibrary.load(require_path(MOSMED))


@pytest.fixture(scope="module")
def large_lesions(library: LesionLibrary) -> LesionLibrary:
    """Shapes of 10 ml and more: their interior is not all soft edge, so levels can be read."""
    return LesionLibrary(tuple(shape for shape in library.shapes if shape.volume_ml >= 10.0))


@pytest.fixture(scope="module")
def lung(phantom) -> np.ndarray:
    return phantom.right | phantom.left


@pytest.fixture(scope="module")
def spacing(phantom) -> tuple[float, float, float]:
    return tuple(phantom.volume.spacing[::-1])


@pytest.fixture(scope="module")
def depth(phantom, lung: np.ndarray) -> np.ndarray:
    """Distance (mm) of every lung voxel to the lung boundary."""
    return signed_distance(~lung, VoxelGrid.of(phantom.volume))


def insert(phantom, lung, spacing, library, seed: int, **kwargs) -> InsertedLesions:
    return insert_lesions(
        phantom.volume.hu, lung, spacing, library, np.random.default_rng(seed), **kwargs
    )


def test_library_holds_the_mosmed_components(library: LesionLibrary) -> None:
    assert len(library) >= 50
    for shape in library.shapes:
        assert shape.mask.dtype == bool and shape.mask.ndim == 3 and shape.mask.any()
        assert np.allclose(shape.spacing_zyx, 2.0, atol=0.3)  # cached on the ~2 mm grid
    assert {shape.source.split("#")[0] for shape in library.shapes} >= {"study_0255_mask.nii.gz"}


def test_count_is_respected_and_mask_lies_in_the_lung(phantom, lung, spacing, library) -> None:
    result = insert(phantom, lung, spacing, library, seed=1, count=3)
    assert result.count == 3 and len(result.kinds) == 3
    assert set(result.kinds) <= {"ggo", "consolidation"}
    assert result.mask.any() and not (result.mask & ~lung).any()
    assert result.hu.dtype == np.int16 and result.hu.shape == phantom.volume.hu.shape
    assert np.array_equal(result.hu[~lung], phantom.volume.hu[~lung])  # nothing outside lung


def test_default_count_is_one_to_five(phantom, lung, spacing, library) -> None:
    counts = {insert(phantom, lung, spacing, library, seed).count for seed in range(6)}
    assert counts <= {1, 2, 3, 4, 5} and len(counts) > 1


def test_same_seed_same_result_other_seed_differs(phantom, lung, spacing, library) -> None:
    first = insert(phantom, lung, spacing, library, seed=7, count=2)
    again = insert(phantom, lung, spacing, library, seed=7, count=2)
    other = insert(phantom, lung, spacing, library, seed=8, count=2)
    assert np.array_equal(first.hu, again.hu) and np.array_equal(first.mask, again.mask)
    assert first.kinds == again.kinds
    assert not np.array_equal(first.mask, other.mask)


def test_lung_label_map_works_like_a_mask(phantom, lung, spacing, library) -> None:
    labels = phantom.right.astype(np.uint8) + 2 * phantom.left.astype(np.uint8)  # LungLabel
    from_labels = insert(phantom, labels, spacing, library, seed=3, count=2)
    from_mask = insert(phantom, lung, spacing, library, seed=3, count=2)
    assert np.array_equal(from_labels.hu, from_mask.hu)


def test_inputs_are_not_modified(phantom, lung, spacing, library) -> None:
    hu, lung_before = phantom.volume.hu.copy(), lung.copy()
    result = insert(phantom, lung, spacing, library, seed=2, count=4)
    assert np.array_equal(phantom.volume.hu, hu) and np.array_equal(lung, lung_before)
    assert not np.shares_memory(result.hu, phantom.volume.hu)


def test_empty_lung_gets_no_lesion(phantom, spacing, library) -> None:
    empty = np.zeros(phantom.volume.hu.shape, dtype=bool)
    result = insert(phantom, empty, spacing, library, seed=0, count=3)
    assert result.count == 0 and result.kinds == () and not result.mask.any()
    assert np.array_equal(result.hu, phantom.volume.hu)
    assert not np.shares_memory(result.hu, phantom.volume.hu)


def test_ggo_and_consolidation_reach_their_levels(phantom, lung, spacing, large_lesions) -> None:
    """Single large lesions; statistics over the interior parenchyma (not the vessels)."""
    before = phantom.volume.hu
    levels: dict[str, list[float]] = {"ggo": [], "consolidation": []}
    rises, upper = [], []
    for seed in range(16):
        result = insert(phantom, lung, spacing, large_lesions, seed, count=1)
        interior = ndi.binary_erosion(result.mask) & (before < -500)
        values = result.hu[interior].astype(float)
        (kind,) = result.kinds
        if kind == "ggo":
            levels[kind].append(values.mean())
            rises.append((values - before[interior]).mean())
            upper.append(np.percentile(values, 95))
        else:
            levels[kind].append(np.percentile(values, 75))  # mixed: a GGO rim, dense core
    assert len(levels["ggo"]) >= 3 and len(levels["consolidation"]) >= 2
    assert np.mean(rises) > 200  # from about -850 HU
    assert all(-750 < level < -400 for level in levels["ggo"])
    assert max(upper) < -300  # GGO stays below consolidation
    assert all(-250 < level < 100 for level in levels["consolidation"])


def test_ggo_keeps_vessels_visible(large_lesions) -> None:
    """Uniform lung crossed by a lattice of vessels: where a GGO covers them they stay dense."""
    hu = np.full((40, 80, 80), -850, dtype=np.int16)
    vessels = np.zeros(hu.shape, dtype=bool)
    vessels[:, 4::8, 4::8] = True
    hu[ndi.binary_dilation(vessels, np.ones((1, 2, 2), dtype=bool))] = 40
    lung = np.zeros(hu.shape, dtype=bool)
    lung[2:-2, 2:-2, 2:-2] = True
    checked = 0
    for seed in range(6):
        result = insert_lesions(
            hu, lung, (2.0, 2.0, 2.0), large_lesions, np.random.default_rng(seed), count=1
        )
        if result.kinds != ("ggo",):
            continue
        covered = result.mask & (hu == 40)
        assert covered.any()
        assert np.abs(result.hu[covered].astype(int) - 40).mean() < 20
        checked += 1
    assert checked >= 2


def test_lesions_prefer_the_periphery(phantom, lung, spacing, library, depth) -> None:
    """Mean depth of the lesion voxels per draw, averaged over draws (so that one very large
    lesion does not decide), against the mean depth of the lung voxels."""
    lesion_depths = [
        depth[insert(phantom, lung, spacing, library, seed, count=3).mask].mean()
        for seed in range(8)
    ]
    assert np.mean(lesion_depths) < 0.9 * depth[lung].mean()


def test_lesions_prefer_the_back(phantom, lung, spacing, library) -> None:
    """Rows run anterior to posterior when posterior_axis_sign is +1, the other way when -1."""

    def mean_row(sign: int) -> float:
        rows = [
            np.argwhere(
                insert(
                    phantom, lung, spacing, library, seed, count=3, posterior_axis_sign=sign
                ).mask
            )[:, 1]
            for seed in range(6)
        ]
        return float(np.concatenate(rows).mean())

    centre = float(np.argwhere(lung)[:, 1].mean())
    assert mean_row(+1) > centre > mean_row(-1)
