"""InfoNCE critics and the bound I(x; x') >= log N - L_NCE.

A critic embeds an image; the score of a pair is the cosine similarity of
the two embeddings divided by a temperature (0.1, as the reference method).
The reference method uses a ResNet-18 with an MLP head; that costs seconds
per step on a CPU, so the default here is a small CNN (three strided 3x3
convolutions on images resized to 32x32, a 4x4 average pool that keeps the
coarse position, and a two-layer MLP head). ``resnet18`` builds the
reference architecture for GPU runs. Both see the same inputs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

CRITICS = ("small", "resnet18")

# An optional view transform of critic inputs: (inputs, index, side) -> inputs of the same shape, where
# ``index`` is the training step or held-out chunk and ``side`` 0 (anchors) or 1 (positives).
Transform = Callable[[torch.Tensor, int, int], torch.Tensor]


class SmallCritic(nn.Module):
    """Three strided convolutions + MLP head: cheap enough for a CPU sweep."""

    def __init__(self, channels: int = 3, width: int = 16, dim: int = 64):
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, c1, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(c2, c3, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten())  # 4x4 cells: where things are still counts
        self.head = nn.Sequential(nn.Linear(16 * c3, 128), nn.ReLU(), nn.Linear(128, dim))

    def forward(self, x):  # (B, C, H, W) in [-1, 1] -> (B, dim), unit norm
        return F.normalize(self.head(self.encoder(x)), dim=1)


class _Block(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm and a skip."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class ResNet18Critic(nn.Module):
    """ResNet-18 (CIFAR-style 3x3 stem for small images) + MLP head, as the reference critic."""

    def __init__(self, channels: int = 3, dim: int = 128):
        super().__init__()
        layers = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
            cin = cout
        self.encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, dim))

    def forward(self, x):
        return F.normalize(self.head(self.encoder(x)), dim=1)


def make_critic(name: str, channels: int = 3) -> nn.Module:
    """A fresh critic; the caller seeds torch first so initialisations are reproducible."""
    if name == "small":
        return SmallCritic(channels)
    if name == "resnet18":
        return ResNet18Critic(channels)
    raise ConfigError(f"unknown critic {name!r}; choose one of: {', '.join(CRITICS)}")


def prepare(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """[0, 1] images (B, C, H, W) -> the critic's input: square ``resolution`` px, in [-1, 1].

    Antialiased resizing keeps it differentiable (walkers train through it).
    """
    if images.shape[-1] != resolution or images.shape[-2] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True,
                               align_corners=False)
    return images * 2 - 1


def info_nce(za: torch.Tensor, zb: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE loss of N paired embeddings (N, D): row i of ``za`` goes with row i of ``zb``.

    Each direction gives I(x; x') >= log N - L; their mean is a bound too.
    """
    logits = za @ zb.T / temperature
    target = torch.arange(len(za), device=za.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train_critic(critic: nn.Module, xa: torch.Tensor, xb: torch.Tensor, steps: int, batch: int, lr: float,
                 temperature: float, generator: torch.Generator, transform: Transform | None = None) -> list[float]:
    """Minimise InfoNCE over minibatches drawn from the training pairs (xa[i], xb[i]).

    Adam with betas (0.5, 0.999), as the reference method. Returns the loss
    of every step. ``generator`` (CPU) fixes the minibatch order.
    ``transform(x, step, side)``, if given, is applied to each side of every
    minibatch before the critic sees it (e.g. T_x augmentations).
    """
    opt = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.999))
    critic.train()
    losses = []
    for step in range(steps):
        i = torch.randperm(len(xa), generator=generator)[:batch].to(xa.device)
        a, b = xa[i], xb[i]
        if transform is not None:
            a, b = transform(a, step, 0), transform(b, step, 1)
        loss = info_nce(critic(a), critic(b), temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def bounds(critic: nn.Module, xa: torch.Tensor, xb: torch.Tensor, n: int, temperature: float,
           transform: Transform | None = None) -> list[float]:
    """log N - L_NCE on consecutive held-out batches of ``n`` pairs (a remainder is dropped).

    ``transform(x, chunk, side)``, if given, is applied to each side of every
    256-pair chunk before it is embedded (``chunk`` counts from 0).
    """
    if len(xa) < n:
        raise ConfigError(f"need at least {n} held-out pairs to evaluate a bound with N={n}, got {len(xa)}")
    critic.eval()

    def embed(x, side):
        chunks = [x[k:k + 256] for k in range(0, len(x), 256)]
        if transform is not None:
            chunks = [transform(c, j, side) for j, c in enumerate(chunks)]
        return torch.cat([critic(c) for c in chunks])

    za, zb = embed(xa, 0), embed(xb, 1)
    return [math.log(n) - info_nce(za[k:k + n], zb[k:k + n], temperature).item()
            for k in range(0, len(xa) - n + 1, n)]
