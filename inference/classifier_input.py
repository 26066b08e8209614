"""DeCoVNet's input (METHOD step 6): the lung bounding box, 224x336 per slice, CT + lung mask.

The volume is resampled once (SimpleITK, linear) onto a grid over the lungs' 3-D bounding box
with 224x336 pixels per slice and slices every `SLICE_MM` along z; the lung mask is sampled onto
the same grid. The grid is patient-space geometry, so the CAM and the lesions computed on it
map back onto the original slices (:func:`inference.resampling.to_original`).

Slice spacing: the reference resamples to about 1 mm (T about 300 for a chest). Here slices are
3 mm apart (T about 100), which makes DeCoVNet three times cheaper to train and run on a CPU;
training and inference use the same spacing. A COVID-19 lesion spans several centimetres, so
3 mm slices still cover each one many times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from inference.models.decovnet import INPUT_HEIGHT, INPUT_WIDTH
from inference.grid import bounding_box
from inference.resampling import SampleGrid, box_grid, sample, window
from inference.types import CTVolume

SLICE_MM = 3.0
MIN_SLICES = 8
"""DeCoVNet's temporal convolutions and poolings need a few slices; shorter inputs are padded."""


@dataclass(frozen=True)
class ClassifierInput:
    """The lung box sampled for the classifier: HU (float32) and lung mask (bool), (T, 224, 336)."""

    grid: SampleGrid
    hu: np.ndarray
    lungs: np.ndarray

    def tensor(self, hu: np.ndarray | None = None) -> torch.Tensor:
        """(1, 2, T, 224, 336): windowed CT (0..1) and the binary lung mask; ``hu`` replaces the
        sampled HU (a copy with inserted lesions, in training)."""
        ct = window(self.hu if hu is None else hu)
        stacked = np.stack([ct, self.lungs.astype(np.float32)])
        return torch.from_numpy(stacked)[None]


def classifier_input(volume: CTVolume, lung_labels: np.ndarray) -> ClassifierInput | None:
    """The classifier input over the lungs of ``lung_labels``; None when there is no lung."""
    box = bounding_box(lung_labels)
    if box is None:
        return None
    grid = box_grid(volume, box, SLICE_MM, INPUT_HEIGHT, INPUT_WIDTH)
    hu = sample(volume, grid)
    lungs = sample(volume, grid, lung_labels, labels=True) > 0
    return ClassifierInput(grid, hu, lungs)


def pad_slices(x: torch.Tensor) -> torch.Tensor:
    """Repeat the last slice until the input has `MIN_SLICES` slices (a very short scan)."""
    missing = MIN_SLICES - x.shape[2]
    if missing <= 0:
        return x
    return torch.cat([x, x[:, :, -1:].expand(-1, -1, missing, -1, -1)], dim=2)


def cam_slices(slices: int) -> int:
    """Slices of DeCoVNet's block-2 CAM (every other input slice) that belong to the ``slices``
    real slices of an input, not to what :func:`pad_slices` added."""
    return max(1, slices // 2)
