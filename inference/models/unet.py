"""The 2-D lung U-Net of METHOD step 5: base width 16 (16-32-64-128-128), bilinear upsampling.

Applied slice by slice (one CT channel in 0..1, two classes: background, lung). It is fully
convolutional, so it runs on slices of any size divisible by 16; the node runs it on
downsampled slices (see :mod:`inference.lung_unet`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CLASSES = 2
LUNG = 1
SIZE_MULTIPLE = 16
"""Input height and width must be multiples of this (four 2x poolings)."""


class DoubleConv(nn.Sequential):
    """(3x3 conv, BatchNorm, ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int, inner: int | None = None) -> None:
        inner = inner or out_channels
        super().__init__(
            nn.Conv2d(in_channels, inner, 3, padding=1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Bilinear 2x upsampling, concatenation with the skip connection, double convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Input (N, 1, H, W) in 0..1; output logits (N, 2, H, W)."""

    def __init__(self, base: int = 16) -> None:
        super().__init__()
        widths = [base, base * 2, base * 4, base * 8]
        self.inc = DoubleConv(1, widths[0])
        self.downs = nn.ModuleList(
            [DoubleConv(widths[i], widths[i + 1]) for i in range(3)] + [DoubleConv(widths[3], widths[3])]
        )
        self.ups = nn.ModuleList(
            [
                Up(widths[3] * 2, widths[2]),
                Up(widths[2] * 2, widths[1]),
                Up(widths[1] * 2, widths[0]),
                Up(widths[0] * 2, widths[0]),
            ]
        )
        self.out = nn.Conv2d(widths[0], CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.out(x)
