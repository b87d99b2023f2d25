"""Convolutional conditional VAE: the class enters the encoder and the decoder as a one-hot.

Two stride-2 convolutions each way, so image sides must be multiples of 4 (the resize
operator guarantees that). Pixels are modelled as Bernoulli means (BCE with logits), the
sample is the decoder's mean image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from synth.models.base import ImageSchema


class _CVAE(nn.Module):
    def __init__(self, schema: ImageSchema, latent_dim: int, width: int, hidden: int):
        super().__init__()
        self.schema, self.latent_dim = schema, latent_dim
        self.grid = (2 * width, schema.height // 4, schema.width // 4)
        flat = self.grid[0] * self.grid[1] * self.grid[2]
        k = schema.num_classes
        self.encoder = nn.Sequential(
            nn.Conv2d(schema.channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.to_hidden = nn.Sequential(nn.Linear(flat + k, hidden), nn.LeakyReLU(0.2))
        self.to_stats = nn.Linear(hidden, 2 * latent_dim)
        self.from_latent = nn.Sequential(
            nn.Linear(latent_dim + k, hidden), nn.ReLU(), nn.Linear(hidden, flat), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, schema.channels, 4, 2, 1),
        )

    def decode(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(torch.cat([z, onehot], 1)).view(-1, *self.grid))

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        onehot = F.one_hot(labels, self.schema.num_classes).float()
        stats = self.to_stats(self.to_hidden(torch.cat([self.encoder(images), onehot], 1)))
        mu, logvar = stats.chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, onehot), mu, logvar


class ConditionalVAE:
    name = "cvae"

    def build(self, schema: ImageSchema, config: dict[str, Any]) -> nn.Module:
        return _CVAE(schema, config.get("latent_dim", 16), config.get("width", 32), config.get("hidden", 256))

    def noise_dim(self, config: dict[str, Any]) -> int:
        return config.get("latent_dim", 16)

    def training_step(self, module: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, mu, logvar = module(images, labels)
        n = images.shape[0]
        reconstruction = F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / n
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
        return {"loss": reconstruction + kl, "reconstruction": reconstruction, "kl": kl}

    @torch.no_grad()
    def sample(self, module: nn.Module, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, module.schema.num_classes).float()
        return torch.sigmoid(module.decode(noise, onehot))
