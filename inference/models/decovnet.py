"""DeCoVNet, the 3-D classifier of METHOD step 7, layer by layer as the reference ran it.

Input: a batch of one volume, 2 channels (CT scaled to 0..1 and the binary lung mask), T slices
of 224x336 (T varies from scan to scan, so batch size is 1). Output: logits for
(negative, COVID-19). The block-2 features are kept for the class activation map (METHOD step 9),
which needs the head's weights chained into one vector per class (:meth:`DeCoVNet.cam`).

BatchNorm normalises each scan with its own statistics, in training and at inference alike
(:class:`ScanNorm`): with batch size 1 the training statistics are one scan's anyway, and
running averages of them, which standard BatchNorm uses at inference, describe no scan: a
scanner whose statistics differ from the training scans' averages shifted every output
(measured: a clean 8 mm scan called positive at inference that training had told apart from
its lesion-inserted twin). Normalising every scan the same way at both times keeps what was
learnt, and makes the output of a scan independent of any other.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_HEIGHT, INPUT_WIDTH = 224, 336
IN_CHANNELS = 2
COVID = 1
"""Index of the COVID-19 class in the logits."""


class ScanNorm(nn.BatchNorm3d):
    """BatchNorm3d over the one scan of the batch, without running statistics (see the module
    docstring), that normalises in place when no gradient is recorded.

    In place because every normalisation in this network follows a convolution whose output
    nothing else reads: a separate output doubled the largest activations (the stem's and
    block 1's, 202 MB each for a 600-slice scan's 168 input slices). The statistics are the
    same biased mean and variance BatchNorm computes, summed in another order: outputs agree
    to float rounding (probabilities within 1e-6). With gradients (training), BatchNorm's own.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        var, mean = torch.var_mean(x, dim=(0, 2, 3, 4), correction=0)
        scale = torch.rsqrt(var + self.eps) * self.weight
        shift = self.bias - mean * scale
        return x.mul_(scale.view(1, -1, 1, 1, 1)).add_(shift.view(1, -1, 1, 1, 1))


class SlicePairMax(nn.Module):
    """``MaxPool3d((2, 1, 1))``: the larger of each pair of slices. At inference without the
    int64 indices MaxPool3d computes and throws away, twice its output's size (202 MB at the
    classifier's peak for a 600-slice scan); the maximum is the same. With gradients (training),
    MaxPool3d's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return nn.functional.max_pool3d(x, (2, 1, 1))
        pairs = x.shape[2] // 2
        return torch.maximum(x[:, :, 0 : 2 * pairs : 2], x[:, :, 1 : 2 * pairs : 2])


class Bottleneck3d(nn.Module):
    """Residual bottleneck: 3x1x1 (temporal) -> 1x3x3 (spatial, may stride) -> 1x1x1, with a
    1x1x1 projection shortcut (the channel count always changes here)."""

    def __init__(self, in_channels: int, inner: int, out_channels: int, spatial_stride: int = 1) -> None:
        super().__init__()
        stride = (1, spatial_stride, spatial_stride)
        self.residual = nn.Sequential(
            nn.Conv3d(in_channels, inner, (3, 1, 1), padding=(1, 0, 0), bias=False),
            ScanNorm(inner),
            nn.ReLU(inplace=True),
            nn.Conv3d(inner, inner, (1, 3, 3), stride=stride, padding=(0, 1, 1), bias=False),
            ScanNorm(inner),
            nn.ReLU(inplace=True),
            nn.Conv3d(inner, out_channels, 1, bias=False),
            ScanNorm(out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
            ScanNorm(out_channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.residual(x)
        if torch.is_grad_enabled():
            return self.relu(residual + self.shortcut(x))
        return self.relu(residual.add_(self.shortcut(x)))  # no third block-sized tensor at inference


class ProgressiveClassifier(nn.Module):
    """ProClf: alternating adaptive max pooling and 3x3x3 convolutions down to 32 features."""

    def __init__(self, in_channels: int = 128, classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.AdaptiveMaxPool3d((16, 24, 36)),
            nn.Conv3d(in_channels, 64, 3),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool3d((4, 12, 18)),
            nn.Conv3d(64, 32, 3),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool3d((1, 6, 9)),
            nn.Conv3d(32, 32, 3, padding=(1, 0, 0)),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool3d(1),
        )
        self.fc1 = nn.Linear(32, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(torch.flatten(self.features(x), 1)))

    def class_weights(self) -> torch.Tensor:
        """One 128-vector per class: every linear step of the head chained together.

        The convolutions are reduced to their spatially averaged kernels and chained with both
        Linear layers (METHOD step 9); the ReLUs and poolings in between are ignored, which is
        the approximation the reference makes.
        """
        chain = None
        for layer in self.features:
            if isinstance(layer, nn.Conv3d):
                kernel = layer.weight.mean(dim=(2, 3, 4))  # (out, in)
                chain = kernel if chain is None else kernel @ chain
        assert chain is not None
        return self.fc2.weight @ self.fc1.weight @ chain  # (classes, in_channels)


class DeCoVNet(nn.Module):
    """Stem -> ResBlock 1 -> temporal max pool -> ResBlock 2 -> ProClf."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(IN_CHANNELS, 16, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            ScanNorm(16),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.block1 = Bottleneck3d(16, 16, 64)
        self.pool1 = SlicePairMax()
        self.block2 = Bottleneck3d(64, 32, 128, spatial_stride=2)
        self.head = ProgressiveClassifier(128, classes)
        self.register_buffer("cam_orientation", torch.ones(()))
        """+1 or -1, set once by training (:mod:`inference.training.cam_orientation`) and saved
        with the weights: the sign under which the chained-weight map points at lesions. The
        chain ignores the head's ReLUs and max poolings, so its sign is not the sign of the
        evidence (measured: the shipped weights' map ranked inserted lesions below the rest of
        the lung, voxel AUC ~0.1, and the RICORD scan's dense regions lowest)."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Block-2 features, (1, 128, T/2, H/8, W/8): what the CAM is computed from."""
        return self.block2(self.pool1(self.block1(self.stem(x))))

    def feature_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stem's output (1, 16, T, H/4, W/4), block 1's (1, 64, T, H/4, W/4) and block 2's
        (:meth:`features`): the three levels of :mod:`inference.multilevel_cam`."""
        stem = self.stem(x)
        block1 = self.block1(stem)
        return stem, block1, self.block2(self.pool1(block1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the raw COVID-class activation map (1, T/2, H/8, W/8), before ReLU."""
        features = self.features(x)
        return self.head(features), self.cam(features)

    def cam(self, features: torch.Tensor) -> torch.Tensor:
        """The raw COVID-class activation map of block-2 ``features``: the head's chained class
        weights (:meth:`ProgressiveClassifier.class_weights`) summed over the channels, times
        :attr:`cam_orientation`."""
        weights = self.head.class_weights()[COVID] * self.cam_orientation
        return torch.einsum("c,bczyx->bzyx", weights, features)
