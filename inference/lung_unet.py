"""Lung segmentation with the 2-D U-Net (METHOD step 5), run on a coarse grid and mapped back.

Why coarse: the reference runs the U-Net on every 512x512 slice, about 0.4 s per slice on a
2-core CPU, minutes per scan. Lungs are smooth, so the node runs it on slices resampled to about
2 mm pixels every 2.5 mm (or the original spacing when coarser), 30-40 times less work; the
probability is mapped back onto the original slices with linear interpolation, which keeps the
mask within Dice 0.97 of running on every full-resolution slice (tested).

Post-processing on the coarse grid: keep the lung-sized components, fill enclosed holes slice by
slice (a lesion surrounded by lung is lung), split right from left (:mod:`inference.lung_sides`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from inference.grid import fill_holes_slicewise, keep_large_components
from inference.lung_sides import split_right_left
from inference.models.unet import LUNG, SIZE_MULTIPLE, UNet
from inference.resampling import SampleGrid, original_box, resampled_in_box, sample, whole_grid, window
from inference.types import CTVolume

PIXEL_MM = 2.0
SLICE_MM = 2.5
BATCH = 4
"""Coarse slices per U-Net call. The activations of a call (a few MB each) come from the C
allocator's heap, which keeps them once freed, for no later stage to reuse: 16 at a time left
about 450 MB behind for a 600-slice scan, 4 about 250 MB, as fast, same masks."""
MIN_LUNG_ML = 20.0
"""Smaller components are never a lung."""
MIN_RELATIVE_SIZE = 0.1
"""Components smaller than this fraction of the largest are dropped (airway stubs, specks)."""
BODY_HU = -500.0
"""Denser than this is body (or table): the U-Net runs on the box around it."""
BODY_MARGIN = 8
"""Coarse pixels kept around the body box."""
MAX_HOLE_CM2 = 40.0
"""Largest enclosed hole filled per slice (a lesion wholly surrounded by lung)."""


def lung_probability(model: UNet, slices: np.ndarray, device: torch.device) -> np.ndarray:
    """U-Net lung probability for each slice of ``slices`` (n, H, W; windowed 0..1)."""
    out = np.empty(slices.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(slices), BATCH):
            batch = torch.from_numpy(slices[start : start + BATCH, None]).to(device)
            logits = model(batch)
            out[start : start + BATCH] = torch.softmax(logits, dim=1)[:, LUNG].float().cpu().numpy()
    return out


def segment_lungs_unet(volume: CTVolume, model: UNet, device: torch.device, full_resolution: bool = False) -> np.ndarray:
    """Label map (LungLabel values, uint8, shape of ``volume.hu``) from the U-Net.

    ``full_resolution`` runs the U-Net on every original slice at its own pixel size instead,
    as the reference does: the yardstick the coarse grid is compared with.
    """
    if full_resolution:
        spacing = volume.spacing
        grid = whole_grid(volume, float(min(spacing[:2])), float(spacing[2]), SIZE_MULTIPLE)
    else:
        grid = whole_grid(volume, PIXEL_MM, SLICE_MM, SIZE_MULTIPLE)
    hu = sample(volume, grid)
    rows, columns = body_box(hu)
    probability = np.zeros(hu.shape, dtype=np.float32)
    probability[:, rows, columns] = lung_probability(model, window(hu[:, rows, columns]), device)
    labels = postprocess(probability > 0.5, grid)
    return labels_to_original(volume, grid, labels)


def body_box(hu: np.ndarray) -> tuple[slice, slice]:
    """In-plane box around everything denser than air in any slice, sides a multiple of 16.

    The field of view is often much wider than the body (a whole-body PET/CT: twice as wide);
    the U-Net's time grows with the pixels it sees, and the lungs are inside the body.
    """
    dense = hu > BODY_HU
    rows, columns = np.flatnonzero(dense.any(axis=(0, 2))), np.flatnonzero(dense.any(axis=(0, 1)))
    if len(rows) == 0:
        return slice(0, hu.shape[1]), slice(0, hu.shape[2])
    return _padded(rows, hu.shape[1]), _padded(columns, hu.shape[2])


def _padded(hits: np.ndarray, size: int) -> slice:
    """The span of ``hits`` plus a margin, widened to a multiple of `SIZE_MULTIPLE` within ``size``."""
    start, stop = max(0, int(hits[0]) - BODY_MARGIN), min(size, int(hits[-1]) + 1 + BODY_MARGIN)
    length = min(size, -(-(stop - start) // SIZE_MULTIPLE) * SIZE_MULTIPLE)
    start = max(0, min(start, size - length))
    return slice(start, start + length)


def postprocess(mask: np.ndarray, grid: SampleGrid) -> np.ndarray:
    """Lung components kept, holes filled, right and left split (LungLabel values)."""
    voxels = grid.voxel_grid
    lungs = keep_large_components(mask, voxels.voxel_ml, MIN_LUNG_ML, MIN_RELATIVE_SIZE)
    if not lungs.any():
        return np.zeros(mask.shape, dtype=np.uint8)
    lungs = fill_holes_slicewise(lungs, voxels, MAX_HOLE_CM2)
    return split_right_left(lungs, voxels)


def labels_to_original(volume: CTVolume, grid: SampleGrid, labels: np.ndarray) -> np.ndarray:
    """Coarse labels onto the original slices: the lung outline by linear interpolation (smooth,
    sub-voxel), the side of each lung voxel from the nearest coarse label; both only in the box
    the grown labels can reach."""
    # Grow the labels by one coarse voxel so every voxel inside the smooth outline finds a side.
    grown = np.where(labels > 0, labels, ndi.grey_dilation(labels, size=(3, 3, 3)))
    out = np.zeros(volume.hu.shape, dtype=np.uint8)
    box = original_box(volume, grid, grown)
    if box is None:
        return out
    lung = resampled_in_box(volume, grid, (labels > 0).astype(np.float32), box)
    side = resampled_in_box(volume, grid, grown, box, labels=True)
    out[box] = np.where(lung > 0.5, side, 0)
    return out
