"""Class activation maps at three levels of DeCoVNet's features (METHOD step 9), for ``predict``.

Why three levels: the features see the lungs at different scales. The stem's output (every
slice, a quarter of the in-plane resolution) still resolves a small ground-glass opacity; block 2's
(every other slice, an eighth of the resolution, 128 channels that the head reads) responds to
large patchy lesions. Seeing all three on the same sections shows which level found what.

- high (block 2): the CAM the analysis reports and localizes lesions with, the head's chained
  class weights applied to the block-2 features, oriented (:meth:`DeCoVNet.cam`); unchanged here.
- mid (block 1) and low (stem): these features have no classifier weights of their own, so
  their maps are Grad-CAM (Selvaraju et al., 2017), the standard way to get a class map from an
  intermediate layer: each channel is weighted by the spatial mean of the gradient of the
  COVID-19 logit with respect to it, the weighted channels are summed and the sum goes through
  a ReLU (only evidence for the class is kept).

Every map is then treated like the reported CAM: upsampled to the classifier's grid and
min-max normalised over the lungs (:func:`inference.localize.upsample_cam`), mapped onto the
original slices (:func:`inference.resampling.to_original`) and stored as uint8 (0..255 for 0..1).

Cost: one forward pass with autograd and one backward pass down to the stem's output (the
gradients go to the features only, never into the parameters' ``.grad``). Only ``predict``
asks for these maps; the node's :meth:`inference.api.Analyzer.analyze` never does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from inference.classifier_input import ClassifierInput, classifier_input, pad_slices
from inference.localize import upsample_cam
from inference.models.decovnet import COVID, DeCoVNet
from inference.resampling import to_original_uint8
from inference.types import CTVolume

LEVELS = {"low": "low (stem)", "mid": "mid (block 1)", "high": "high (block 2)"}
"""Level name -> title, from the lowest level to the highest (the order of every result here)."""


def raw_level_cams(model: DeCoVNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw COVID-19 maps of input ``x`` (1, 2, T, H, W) at the low, mid and high level.

    Low and mid are Grad-CAM on the stem's and block 1's output, (1, T, H/4, W/4), 0 or more;
    high is :meth:`DeCoVNet.cam` on block 2's, (1, T/2, H/8, W/8), signed. The model runs in
    eval mode (batch-norm statistics untouched) whatever its mode, which is restored afterwards.
    """
    with _evaluating(model), torch.enable_grad():
        # The input asks for gradients so that the graph is built even for frozen parameters;
        # autograd.grad then computes only the paths to the two feature maps.
        stem, block1, block2 = model.feature_levels(x.detach().requires_grad_())
        logit = model.head(block2)[0, COVID]
        gradients = torch.autograd.grad(logit, (stem, block1))
        low, mid = (grad_cam(features, gradient) for features, gradient in zip((stem, block1), gradients))
        high = model.cam(block2)
    return low.detach(), mid.detach(), high.detach()


def grad_cam(features: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """ReLU of the channels of ``features`` (1, C, t, h, w) weighted by the spatial mean of the
    class logit's ``gradient`` with respect to them: the map (1, t, h, w)."""
    weights = gradient.mean(dim=(2, 3, 4))
    return torch.relu(torch.einsum("bc,bczyx->bzyx", weights, features))


def level_cams(model: DeCoVNet, prepared: ClassifierInput, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Each level's map on the classifier grid (shape of ``prepared.hu``), float32 in 0..1.

    The slices added for a very short scan (:func:`pad_slices`) are cut off each map first, as
    :class:`inference.api.Analyzer` does for the CAM, so "high" equals the analysis's CAM.
    """
    x = pad_slices(prepared.tensor()).to(device)
    slices = prepared.hu.shape[0]
    maps = {}
    for name, raw in zip(LEVELS, raw_level_cams(model, x)):
        depth = max(1, raw.shape[1] * slices // x.shape[2])  # map slices of real input slices
        maps[name] = upsample_cam(raw[:, :depth], prepared.hu.shape, prepared.lungs)
    return maps


def level_cams_on_original(
    model: DeCoVNet, volume: CTVolume, lung_labels: np.ndarray, device: torch.device | str = "cpu"
) -> dict[str, np.ndarray] | None:
    """Each level's map on the original slices of ``volume``, uint8 like ``Findings.cam``;
    None when ``lung_labels`` holds no lung (no classifier input, as in the analysis)."""
    prepared = classifier_input(volume, lung_labels)
    if prepared is None:
        return None
    return {
        name: to_original_uint8(volume, prepared.grid, cam)
        for name, cam in level_cams(model, prepared, device).items()
    }


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)
