"""The discriminator of :mod:`synthviews.train.gan`: a small residual conv net.

A 1x1 from-image conv, residual blocks that halve the resolution down to 4x4
(average-pool downsampling), minibatch standard deviation, a 3x3 conv and two
dense layers. Equalised learning rate and leaky ReLU * sqrt(2), as in the
generator, so one learning rate suits both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.stylegan2.networks import SQRT2  # the gain that keeps lrelu's output variance


class EqConv2d(nn.Module):
    """Conv with equalised learning rate (weights ~ N(0, 1), scaled by 1/sqrt(fan_in) at run time)."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1 / math.sqrt(cin * kernel * kernel)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)


class EqLinear(nn.Module):
    """Linear layer with equalised learning rate, like :class:`EqConv2d`."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.gain = 1 / math.sqrt(cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.gain, self.bias)


def _lrelu(x):
    return F.leaky_relu(x, 0.2) * SQRT2


class DBlock(nn.Module):
    """Residual downsampling block: (conv3x3, conv3x3, avgpool) + (avgpool, conv1x1), scaled by 1/sqrt(2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = EqConv2d(cin, cin, 3)
        self.conv1 = EqConv2d(cin, cout, 3)
        self.skip = EqConv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        y = F.avg_pool2d(_lrelu(self.conv1(_lrelu(self.conv0(x)))), 2)
        return (y + self.skip(F.avg_pool2d(x, 2))) / SQRT2


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append one channel: the mean std of the features over groups of ``group`` samples."""
    n, c, h, w = x.shape
    g = min(group, n)
    while n % g:
        g -= 1
    y = x.reshape(g, n // g, c, h, w)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])  # (n // g,)
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # sample i belongs to group column i % (n // g)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """image (N, C, R, R) in [-1, 1] -> logits (N,)."""

    def __init__(self, img_resolution: int = 32, img_channels: int = 1, channel_base: int = 1024,
                 channel_max: int = 128, mbstd_group: int = 4):
        super().__init__()
        ch = lambda res: min(channel_base // res, channel_max)  # noqa: E731
        self.mbstd_group = mbstd_group
        self.from_img = EqConv2d(img_channels, ch(img_resolution), 1)
        blocks, res = [], img_resolution
        while res > 4:
            blocks.append(DBlock(ch(res), ch(res // 2)))
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        c = ch(4)
        self.conv = EqConv2d(c + 1, c, 3)
        self.fc = EqLinear(c * 16, c)
        self.out = EqLinear(c, 1)

    def forward(self, img):
        x = _lrelu(self.from_img(img))
        for block in self.blocks:
            x = block(x)
        x = _lrelu(self.conv(minibatch_stddev(x, self.mbstd_group)))
        return self.out(_lrelu(self.fc(x.flatten(1)))).squeeze(1)
