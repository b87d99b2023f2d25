"""Resolution-general building blocks of the image generators.

The shape of every image network follows from the image side: one residual block per
octave (a factor of 2) between the image and a bottom grid (at least 4 pixels a side when
there is a choice), channels by resolution (`width` at 32 pixels, doubling per octave below to
4·width, halving per octave above), the class
entering through embeddings: conditional batch norm in the generators, a projection in
the discriminator. 8×8 and 28×28 get two octaves, 32×32 three, 64×64 four, 128×128 five;
non-square sides work when the strides divide both.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

MIN_OCTAVES = 2
MAX_OCTAVES = 5
MIN_BOTTOM_SIDE = 4
"""More octaves are added only while the bottom grid keeps at least this many pixels a side."""


def octaves(height: int, width: int) -> int:
    """Stride-2 levels between an image of these sides and its bottom grid (at least two:
    sides must be multiples of 4)."""
    levels = MIN_OCTAVES
    while (levels < MAX_OCTAVES and height % 2 ** (levels + 1) == 0 and width % 2 ** (levels + 1) == 0
           and min(height, width) // 2 ** (levels + 1) >= MIN_BOTTOM_SIDE):
        levels += 1
    return levels


def channels(width: int, levels: int, side: int) -> list[int]:
    """Channels of each octave's block, from the one at the image's resolution (level 0) to
    the one at the bottom grid (`levels - 1`), by resolution: `width` at 32 pixels (or the
    image's side when it is smaller), doubling per octave down to 4·width, halving per octave
    up (a convolution's cost grows with its pixels), at least 8. `side` is the smaller side."""
    above = max(0, math.ceil(math.log2(side / 32))) if side > 32 else 0
    return [max(8, int(width * min(4.0, 2.0 ** (level - above)))) for level in range(levels)]


class ClassNorm(nn.Module):
    """Batch norm whose scale and shift are looked up per class (conditional batch norm);
    with one class it is an ordinary learned affine."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(features, affine=False)
        self.scale = nn.Embedding(num_classes, features)
        self.shift = nn.Embedding(num_classes, features)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


class UpBlock(nn.Module):
    """norm → ReLU → ×2 nearest → conv3 → norm → ReLU → conv3, plus a 1×1 skip (BigGAN's shape)."""

    def __init__(self, inputs: int, outputs: int, num_classes: int):
        super().__init__()
        self.norm1, self.norm2 = ClassNorm(inputs, num_classes), ClassNorm(outputs, num_classes)
        self.conv1 = nn.Conv2d(inputs, outputs, 3, padding=1)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1)
        self.skip = nn.Conv2d(inputs, outputs, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x, labels)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), labels)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """[ReLU] → conv3 → ReLU → conv3 → ½ average pool, plus a 1×1 skip; spectrally
    normalised for a discriminator, batch-normalised for an encoder."""

    def __init__(self, inputs: int, outputs: int, spectral: bool, first: bool = False):
        super().__init__()
        wrap = spectral_norm if spectral else (lambda layer: layer)
        self.first = first
        self.conv1 = wrap(nn.Conv2d(inputs, outputs, 3, padding=1))
        self.conv2 = wrap(nn.Conv2d(outputs, outputs, 3, padding=1))
        self.skip = wrap(nn.Conv2d(inputs, outputs, 1))
        self.norm = nn.Identity() if spectral else nn.BatchNorm2d(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x if self.first else F.leaky_relu(x, 0.2))
        h = self.conv2(F.leaky_relu(self.norm(h), 0.2))
        return F.avg_pool2d(h, 2) + F.avg_pool2d(self.skip(x), 2)


class Decoder(nn.Module):
    """(latent, class) → image logits (N, C, H, W): a linear map onto the bottom grid, then
    one `UpBlock` per octave, then norm → ReLU → conv3 to the image's channels."""

    def __init__(self, height: int, width: int, image_channels: int, num_classes: int, latent_dim: int,
                 base_width: int):
        super().__init__()
        levels = octaves(height, width)
        widths = channels(base_width, levels, min(height, width))
        self.grid = (widths[-1], height // 2 ** levels, width // 2 ** levels)
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(2 * latent_dim, self.grid[0] * self.grid[1] * self.grid[2])
        self.blocks = nn.ModuleList(UpBlock(widths[min(level + 1, levels - 1)], widths[level], num_classes)
                                    for level in reversed(range(levels)))
        self.norm = ClassNorm(widths[0], num_classes)
        self.out = nn.Conv2d(widths[0], image_channels, 3, padding=1)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.project(torch.cat([noise, self.embed(labels)], 1)).view(-1, *self.grid)
        for block in self.blocks:
            x = block(x, labels)
        return self.out(F.relu(self.norm(x, labels)))


class Encoder(nn.Module):
    """Image → features (N, bottom channels · bottom grid): one `DownBlock` per octave."""

    def __init__(self, height: int, width: int, image_channels: int, base_width: int, spectral: bool):
        super().__init__()
        levels = octaves(height, width)
        widths = channels(base_width, levels, min(height, width))
        self.blocks = nn.Sequential(*(DownBlock(image_channels if level == 0 else widths[level - 1], widths[level],
                                                spectral, first=level == 0) for level in range(levels)))
        self.features = widths[-1] * (height // 2 ** levels) * (width // 2 ** levels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.blocks(images), 0.2).flatten(1)
