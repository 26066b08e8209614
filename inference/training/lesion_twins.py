"""Lesions inserted into a classifier input: the twins of training and of the CAM's orientation.

One place for the call into :mod:`inference.synth`, so that a twin in training and a twin that
orients the CAM (:mod:`inference.training.cam_orientation`) are made the same way.
"""

from __future__ import annotations

import numpy as np

from inference.classifier_input import ClassifierInput
from inference.synth import GGO_PROBABILITY, InsertedLesions, LesionLibrary, insert_lesions


def insert_into(
    item: ClassifierInput,
    library: LesionLibrary,
    rng: np.random.Generator,
    lesion_count: tuple[int, int],
    ggo_probability: float = GGO_PROBABILITY,
) -> InsertedLesions:
    """A random count in ``lesion_count`` (inclusive) of lesions inserted into ``item``'s lungs
    (ground glass with ``ggo_probability``, else consolidation)."""
    grid = item.grid
    count = int(rng.integers(lesion_count[0], lesion_count[1] + 1))
    return insert_lesions(
        item.hu,
        item.lungs,
        (grid.spacing[2], grid.spacing[1], grid.spacing[0]),
        library,
        rng,
        count=count,
        superior_is_up=grid.voxel_grid.superior_is_up,
        ggo_probability=ggo_probability,
    )
