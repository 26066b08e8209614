"""CAMs at three feature levels (METHOD step 9): shapes, ranges, Grad-CAM by hand, model hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from inference.classifier_input import classifier_input, pad_slices
from inference.localize import upsample_cam
from inference.models.decovnet import COVID, DeCoVNet
from inference.multilevel_cam import (
    LEVELS,
    level_cams,
    level_cams_on_original,
    raw_level_cams,
)
from inference.types import CTVolume, LungLabel


def small_chest(slices: int) -> tuple[CTVolume, np.ndarray]:
    """A trunk of soft tissue with two aerated lungs with a dense blob, and their labels."""
    rng = np.random.default_rng(slices)
    hu = np.full((slices, 48, 64), 40.0) + rng.normal(0.0, 15.0, (slices, 48, 64))
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[:, 10:38, 6:30] = LungLabel.RIGHT
    labels[:, 10:38, 34:58] = LungLabel.LEFT
    hu[labels > 0] = -850.0
    hu[:, 20:26, 12:18] = -100.0
    volume = CTVolume(hu=hu.astype(np.int16), spacing=(6.0, 6.0, 3.0), origin=(-190.0, -140.0, 0.0))
    return volume, labels


@pytest.fixture(scope="module")
def model() -> DeCoVNet:
    """Random weights; a seed under which no level's map is all zero after the ReLU (Grad-CAM
    of a random network can be)."""
    torch.manual_seed(2)
    return DeCoVNet().eval()


@pytest.mark.parametrize("slices", [12, 5], ids=["12 slices", "5 slices (padded)"])
def test_every_level_lies_on_the_volume_in_range(model: DeCoVNet, slices: int) -> None:
    volume, labels = small_chest(slices)
    prepared = classifier_input(volume, labels)
    assert prepared is not None

    on_grid = level_cams(model, prepared)
    assert list(on_grid) == list(LEVELS) == ["low", "mid", "high"]
    for name, cam in on_grid.items():
        assert cam.shape == prepared.hu.shape and cam.dtype == np.float32, name
        assert cam.min() >= 0.0 and cam.max() <= 1.0, name
        assert cam[prepared.lungs].max() == pytest.approx(1.0), f"{name}: normalised over the lungs"

    original = level_cams_on_original(model, volume, labels)
    assert original is not None and list(original) == list(LEVELS)
    for name, cam in original.items():
        assert cam.shape == volume.hu.shape and cam.dtype == np.uint8, name
        assert cam[labels > 0].max() > 0, name


def test_no_lungs_no_maps(model: DeCoVNet) -> None:
    volume, labels = small_chest(12)
    assert level_cams_on_original(model, volume, np.zeros_like(labels)) is None


def test_the_high_level_is_the_analysis_cam(model: DeCoVNet) -> None:
    """Block 2 keeps the head's chained weights: the very map localization uses."""
    volume, labels = small_chest(12)
    prepared = classifier_input(volume, labels)
    assert prepared is not None
    with torch.inference_mode():
        _, raw = model.forward_with_cam(pad_slices(prepared.tensor()))
    expected = upsample_cam(raw[:, : prepared.hu.shape[0] // 2], prepared.hu.shape, prepared.lungs)
    np.testing.assert_allclose(level_cams(model, prepared)["high"], expected, atol=1e-5)


@pytest.mark.parametrize("level", ["low", "mid"])
def test_grad_cam_matches_a_hand_computation(level: str) -> None:
    """Grad-CAM by finite differences: shifting a whole feature channel by eps changes the
    COVID-19 logit by eps times the sum of its gradient, which is the voxel count times the
    channel's Grad-CAM weight. The network is piecewise linear, so in float64 the difference
    quotient is exact up to rounding."""
    torch.manual_seed(2)  # maps partly positive, partly cut by the ReLU
    model = DeCoVNet().double().eval()
    model.head.features[0] = nn.AdaptiveMaxPool3d((4, 6, 9))  # a smaller head: cheap passes
    x = torch.rand(1, 2, 8, 32, 48, dtype=torch.float64)

    def logit_from(features: torch.Tensor) -> float:
        block1 = model.block1(features) if level == "low" else features
        return model.head(model.block2(model.pool1(block1)))[0, COVID].item()

    with torch.no_grad():
        stem = model.stem(x)
        features = stem if level == "low" else model.block1(stem)
        eps, voxels = 1e-6, features[0, 0].numel()
        weights = []
        for channel in range(features.shape[1]):
            shift = torch.zeros_like(features)
            shift[:, channel] = eps
            weights.append((logit_from(features + shift) - logit_from(features - shift)) / (2 * eps * voxels))
    expected = torch.relu(torch.einsum("c,bczyx->bzyx", torch.tensor(weights, dtype=torch.float64), features))

    low, mid, _ = raw_level_cams(model, x)
    got = low if level == "low" else mid
    assert got.shape == expected.shape == (1, 8, 8, 12)
    assert 0 < (expected > 0).float().mean() < 1, "some voxels kept, some cut by the ReLU"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def test_the_model_is_left_as_it_was() -> None:
    """Eval mode for the maps (batch-norm statistics untouched), the mode restored, no .grad."""
    torch.manual_seed(4)
    model = DeCoVNet().train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    raw_level_cams(model, torch.rand(1, 2, 8, 32, 48))
    assert model.training
    assert all(parameter.grad is None for parameter in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
