"""The networks of METHOD steps 5 and 7: layer shapes, parameter counts, the CAM's weights."""

from __future__ import annotations

import torch

from inference.models.decovnet import DeCoVNet, ScanNorm, SlicePairMax
from inference.models.unet import UNet


def test_decovnet_shapes_at_t150_match_the_method() -> None:
    torch.manual_seed(0)
    model = DeCoVNet().eval()
    x = torch.rand(1, 2, 150, 224, 336)
    with torch.inference_mode():
        stem = model.stem(x)
        block1 = model.pool1(model.block1(stem))
        block2 = model.block2(block1)
        logits, cam = model.forward_with_cam(x)
    assert stem.shape == (1, 16, 150, 56, 84)
    assert block1.shape == (1, 64, 75, 56, 84)
    assert block2.shape == (1, 128, 75, 28, 42)
    assert logits.shape == (1, 2)
    assert cam.shape == (1, 75, 28, 42)


def test_decovnet_has_about_035_million_parameters() -> None:
    count = sum(p.numel() for p in DeCoVNet().parameters())
    assert 330_000 < count < 370_000, count


def test_decovnet_accepts_few_slices() -> None:
    with torch.inference_mode():
        assert DeCoVNet().eval()(torch.rand(1, 2, 8, 224, 336)).shape == (1, 2)


def test_decovnet_normalises_each_scan_alone_in_training_and_at_inference() -> None:
    """A scan's output is the same in training and in eval mode: no running statistics."""
    torch.manual_seed(2)
    model = DeCoVNet()
    scan, other = torch.rand(1, 2, 8, 112, 168), torch.rand(1, 2, 8, 112, 168) * 0.5
    with torch.no_grad():
        trained = model.train()(scan)
        evaluated = model.eval()(scan)
        alone = model.eval()(other)
    assert torch.allclose(trained, evaluated, atol=1e-6)
    assert not torch.allclose(evaluated, alone)  # not a constant: the scans differ
    assert not any(name.endswith("running_mean") for name in model.state_dict())  # no statistics kept


def test_inference_gives_what_the_recorded_forward_gives() -> None:
    """At inference DeCoVNet normalises in place, adds the shortcut in place and pools slice
    pairs without indices, in either memory layout: the logits and the CAM are those of the
    forward that records gradients (BatchNorm's and MaxPool's own), to float rounding."""
    torch.manual_seed(3)
    model = DeCoVNet().eval()
    x = torch.rand(1, 2, 13, 112, 168)  # an odd slice count: the last slice has no pair
    with torch.enable_grad():
        logits, cam = model.forward_with_cam(x)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        model.to(memory_format=layout)
        with torch.inference_mode():
            lean_logits, lean_cam = model.forward_with_cam(x.contiguous(memory_format=layout))
        assert torch.allclose(lean_logits, logits.detach(), atol=1e-5), layout
        assert torch.allclose(lean_cam, cam.detach(), atol=1e-5), layout


def test_scan_norm_normalises_in_place_only_at_inference() -> None:
    torch.manual_seed(4)
    norm, reference = ScanNorm(3), torch.nn.BatchNorm3d(3, track_running_stats=False)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0), norm.bias.uniform_(-1.0, 1.0)
    reference.load_state_dict(norm.state_dict())
    x = torch.randn(1, 3, 4, 5, 6) * 3 + 1
    with torch.inference_mode():
        expected = reference(x)
        given = x.clone()
        out = norm(given)
    assert out.data_ptr() == given.data_ptr()  # the input itself, normalised
    assert torch.allclose(out, expected, atol=1e-5)
    recorded = x.clone().requires_grad_()
    out = norm(recorded)
    assert out.data_ptr() != recorded.data_ptr() and out.requires_grad  # BatchNorm's own, for training


def test_slice_pair_max_is_maxpool_over_slice_pairs() -> None:
    torch.manual_seed(5)
    for slices in (2, 7, 8):
        x = torch.randn(1, 4, slices, 5, 6)
        with torch.inference_mode():
            assert torch.equal(SlicePairMax()(x), torch.nn.MaxPool3d((2, 1, 1))(x)), slices


def test_cam_weights_chain_the_head_linearly() -> None:
    """With the head's non-linearities at identity, the chained weights give the logit difference."""
    torch.manual_seed(1)
    head = DeCoVNet().head
    weights = head.class_weights()
    assert weights.shape == (2, 128)
    # Each conv reduced to its spatial mean acts on a constant input exactly like the full conv.
    features = torch.ones(1, 128, 1, 1, 1)
    chain = features.flatten(1)
    for layer in head.features:
        if isinstance(layer, torch.nn.Conv3d):
            chain = chain @ layer.weight.mean(dim=(2, 3, 4)).T
    expected = head.fc2(head.fc1(chain)) - head.fc2.bias - head.fc2.weight @ head.fc1.bias
    assert torch.allclose(weights.sum(dim=1), expected[0], atol=1e-5)


def test_the_cam_orientation_flips_the_map_and_is_saved_with_the_weights() -> None:
    torch.manual_seed(2)
    model = DeCoVNet()
    features = torch.randn(1, 128, 3, 4, 5)
    plain = model.cam(features)
    model.cam_orientation.fill_(-1.0)
    assert torch.allclose(model.cam(features), -plain)
    assert float(model.state_dict()["cam_orientation"]) == -1.0


def test_unet_keeps_the_slice_size_and_gives_two_classes() -> None:
    model = UNet().eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 1, 96, 128))
    assert out.shape == (2, 2, 96, 128)
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
