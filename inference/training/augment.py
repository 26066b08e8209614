"""DeCoVNet's on-the-fly augmentations (METHOD step 8), written with torch (no torchvision here).

One random in-plane transform per volume, the same for every slice: random crop with scale
0.7-1.0 resized back to 224x336, rotation within +-25 degrees, horizontal flip with p = 0.5;
then a contrast factor 0.5-1.5 on the CT channel. The lung mask channel follows the geometry
(nearest neighbour) and keeps its 0/1 values.

A batch (a training pair) gets one transform for all its volumes, contrast pivot included (the
first volume's mean): a negative and its lesion-inserted twin must differ by the lesions alone,
not by a contrast shift that the lesions' share of the mean would cause.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

CROP_SCALE = (0.7, 1.0)
MAX_ROTATION_DEG = 25.0
FLIP_PROBABILITY = 0.5
CONTRAST = (0.5, 1.5)


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Augmented copy of ``x`` (B, 2, T, H, W): channel 0 CT in 0..1, channel 1 lung mask; one
    transform for the whole batch."""
    batch, _, depth, height, width = x.shape
    theta = _random_affine(rng)
    slices = x.transpose(1, 2).reshape(batch * depth, 2, height, width)  # every slice: the same transform
    grid = F.affine_grid(theta.expand(batch * depth, -1, -1), [batch * depth, 1, height, width], align_corners=False)
    ct = F.grid_sample(slices[:, :1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lungs = F.grid_sample(slices[:, 1:], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    factor = rng.uniform(*CONTRAST)
    mean = ct[:depth].mean()  # the first volume's
    ct = ((ct - mean) * factor + mean).clamp(0.0, 1.0)
    out = torch.cat([ct, lungs], dim=1).reshape(batch, depth, 2, height, width).transpose(1, 2)
    return out.contiguous()


def _random_affine(rng: np.random.Generator) -> torch.Tensor:
    """(1, 2, 3) map from output to input normalised coordinates: crop, rotation, flip."""
    scale = rng.uniform(*CROP_SCALE)
    # The crop (scale s of each side) lies anywhere inside the slice: its centre within 1 - s.
    centre = rng.uniform(-(1.0 - scale), 1.0 - scale, size=2)
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    flip = rng.random() < FLIP_PROBABILITY
    return affine(scale, scale, angle, flip, (centre[0], centre[1]))


def affine(scale_x: float, scale_y: float, angle: float, flip: bool, centre: tuple[float, float]) -> torch.Tensor:
    """(1, 2, 3) map for ``F.affine_grid``: output normalised coordinates, flipped horizontally
    if ``flip``, rotated by ``angle`` (radians), scaled, moved to ``centre`` of the input."""
    sign = -1.0 if flip else 1.0
    cos, sin = math.cos(angle), math.sin(angle)
    theta = [[sign * scale_x * cos, -scale_x * sin, centre[0]], [sign * scale_y * sin, scale_y * cos, centre[1]]]
    return torch.tensor([theta], dtype=torch.float32)
