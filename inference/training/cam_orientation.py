"""The sign of DeCoVNet's CAM, fixed once at the end of training (METHOD step 9).

Why: the CAM chains the head's class weights through its convolutions and Linear layers and
ignores its ReLUs and max poolings, so for a trained head the sign of the map need not be the
sign of the evidence. Measured on the shipped weights before orientation: inserted lesions
ranked below the rest of the lung (voxel AUC 0.02-0.13 on 6 cases of two scans), and on the
RICORD scan the top 5 % of the map held almost none of the dense lung.

What it takes from the data: one bit. The classifier's weights never see a lesion outline; after
training, the negative training scans get lesions inserted from their own random stream, and
the map keeps its sign when it ranks inserted-lesion voxels above the other lung voxels
(mean voxel AUC >= 0.5), else it is flipped (:attr:`DeCoVNet.cam_orientation`, saved with the
weights). Nothing else of the map is fitted.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from inference.classifier_input import ClassifierInput, cam_slices, pad_slices
from inference.localize import upsample_cam
from inference.metrics import roc_auc
from inference.synth import LesionLibrary
from inference.training.lesion_twins import insert_into

logger = logging.getLogger(__name__)

CAM_STREAM = 2**31 + 1
"""Random stream of the orienting lesions, apart from training's and validation's."""
CASES_PER_SCAN = 2
VOXEL_STRIDE = 7
"""Every 7th lung voxel enters the AUC: plenty for a rank statistic, and fast."""


def lesion_voxel_auc(
    model: nn.Module, item: ClassifierInput, lesions: np.ndarray, hu: np.ndarray, device: torch.device
) -> float | None:
    """Voxel AUC of ``model``'s CAM for ``lesions`` against the other lung voxels of ``item``
    with HU ``hu`` (the lesion-inserted CT), on the classifier's grid."""
    with torch.inference_mode():
        x = pad_slices(item.tensor(hu)).to(device)
        raw = model.cam(model.features(x))[:, : cam_slices(item.hu.shape[0])]
    cam = upsample_cam(raw, item.hu.shape, item.lungs)
    inside = item.lungs
    return roc_auc(lesions[inside][::VOXEL_STRIDE].astype(int), cam[inside][::VOXEL_STRIDE])


def orient_cam(
    model: nn.Module,
    negatives: list[ClassifierInput],
    library: LesionLibrary,
    seed: int,
    lesion_count: tuple[int, int],
    device: torch.device,
) -> float | None:
    """Set ``model.cam_orientation`` (see the module docstring); return the mean voxel AUC of the
    oriented CAM, or None for a model without a CAM or when no lesion could be inserted."""
    if not hasattr(model, "cam_orientation"):
        return None
    model.eval()
    cases = []
    for index, item in enumerate(negatives):
        for case in range(CASES_PER_SCAN):
            inserted = insert_into(item, library, np.random.default_rng([seed, CAM_STREAM, index, case]), lesion_count)
            if inserted.count:
                cases.append((item, inserted))
    if not cases:
        return None

    def mean_auc() -> float:
        aucs = [lesion_voxel_auc(model, item, inserted.mask, inserted.hu, device) for item, inserted in cases]
        return float(np.mean([auc for auc in aucs if auc is not None]))

    model.cam_orientation.fill_(1.0)
    auc = mean_auc()
    if auc < 0.5:
        model.cam_orientation.fill_(-1.0)
        auc = mean_auc()
    logger.info(
        "CAM orientation %+d: inserted-lesion voxel AUC %.3f over %d cases", int(model.cam_orientation), auc, len(cases)
    )
    return auc
