"""2DClfNet, the paper's 2-D comparison network (Table 2; METHOD, last bullet).

METHOD: 2-D stem Conv2d(2, 64) 7x7 + BN + ReLU, ResBlock(64, 128), MaxPool2d, ResBlock(128, 128),
two Conv2d(128, 128) 3x3 + ReLU, global max pool per slice, max over slices, FC(128, 2).

Input and output are DeCoVNet's (:mod:`inference.models.decovnet`, :mod:`inference.classifier_input`):
(1, 2, T, 224, 336), CT (0..1) and lung mask, giving logits (1, 2) for (negative, COVID-19). The T
slices go through the 2-D network as one batch of T images; each slice's features are max-pooled
to one 128-vector, the maximum over the slices is taken, and FC(128, 2) gives the logits. So the
scan is called by its most suspicious slice, and the order of the slices does not matter.

Choices METHOD leaves open, made here for the cost on a CPU and so that the comparison with
DeCoVNet isolates 2-D against 3-D rather than other differences:

- Stem: stride 2, then MaxPool2d(3, stride 2, padding 1), exactly DeCoVNet's stem in 2-D. The
  rest of the network then runs on 56x84 and 28x42 maps, as DeCoVNet's does; without the
  strides the two 128-channel 3x3 convolutions would cost 16 times more.
- ResBlocks: 2-D versions of DeCoVNet's bottleneck blocks, 1x1 -> 3x3 -> 1x1 with BatchNorm and
  a 1x1 projection shortcut (also in ResBlock(128, 128), to keep both blocks alike), inner
  width 32 in both (DeCoVNet uses 16 and 32); the 1x1 in place of DeCoVNet's 3x1x1 is the
  2-D counterpart, as no convolution crosses slices here.
- MaxPool2d(2) between the blocks (DeCoVNet's block 2 downsamples by its stride-2 3x3 instead).
- The two 3x3 convolutions use padding 1 and a bias (no BatchNorm follows them).
- BatchNorm statistics in training are over the T slices of the scan (the batch the 2-D
  network sees); in evaluation mode the running statistics are used, so each slice is then
  processed independently of the others.

Cost, measured on 2 CPU threads at T=80 (forward + backward, training mode): about 2.5 times
DeCoVNet's (11.6 s against 4.5 s on a loaded machine) and about 1.8 times its peak memory
(2.7 GB against 1.5 GB); inference 5.0 s against 1.9 s. That is within budget, so the slices go
through in one batch, not in chunks. 360,450 parameters (DeCoVNet: 346,978).

No class activation map: DeCoVNet's CAM comes from its 3-D features and head (METHOD step 9);
2DClfNet only classifies, so an analysis with it reports no lesions (:mod:`inference.api`).
"""

from __future__ import annotations

import torch
from torch import nn

from inference.models.decovnet import IN_CHANNELS

WIDTH = 128
"""Features per slice before the max over slices."""


class Bottleneck2d(nn.Module):
    """Residual bottleneck 1x1 -> 3x3 -> 1x1 with BatchNorm, and a 1x1 projection shortcut."""

    def __init__(self, in_channels: int, inner: int, out_channels: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, inner, 3, padding=1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class ClfNet2d(nn.Module):
    """Stem -> ResBlock(64, 128) -> MaxPool2d(2) -> ResBlock(128, 128) -> 2 x (3x3 conv + ReLU)
    -> max per slice -> max over slices -> FC(128, 2)."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(IN_CHANNELS, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.block1 = Bottleneck2d(64, 32, WIDTH)
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = Bottleneck2d(WIDTH, 32, WIDTH)
        self.convs = nn.Sequential(
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(WIDTH, classes)

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """One 128-vector per slice, (T, 128), from the input (1, 2, T, H, W)."""
        if x.shape[0] != 1:
            raise ValueError(f"2DClfNet takes one scan at a time (batch 1), got a batch of {x.shape[0]}")
        slices = x[0].transpose(0, 1)  # (T, 2, H, W): the slices are the 2-D network's batch
        maps = self.convs(self.block2(self.pool1(self.block1(self.stem(slices)))))
        return torch.amax(maps, dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.amax(self.slice_features(x), dim=0, keepdim=True)  # (1, 128): max over slices
        return self.fc(pooled)
