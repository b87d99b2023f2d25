"""Convolutional conditional VAE.

The class enters as a one-hot everywhere it can steer the output: as constant input
channels of the encoder, beside the latent code, and as constant channels at each decoder
resolution (so the decoder cannot ignore it in favour of the latent). Two stride-2 layers
each way, so image sides must be multiples of 4 (the resize operator guarantees that).
Pixels are Bernoulli means (BCE with logits); a sample is the decoder's mean image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from synth.models.base import ImageModel, ImageSchema, adam


class _CVAE(nn.Module):
    def __init__(self, schema: ImageSchema, latent_dim: int, width: int, hidden: int):
        super().__init__()
        self.schema, self.latent_dim = schema, latent_dim
        self.grid = (2 * width, schema.height // 4, schema.width // 4)
        flat = self.grid[0] * self.grid[1] * self.grid[2]
        k = schema.num_classes
        self.encoder = nn.Sequential(
            nn.Conv2d(schema.channels + k, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.to_hidden = nn.Sequential(nn.Linear(flat + k, hidden), nn.LeakyReLU(0.2))
        self.to_stats = nn.Linear(hidden, 2 * latent_dim)
        self.from_latent = nn.Sequential(
            nn.Linear(latent_dim + k, hidden), nn.ReLU(), nn.Linear(hidden, flat), nn.ReLU()
        )
        self.up1 = nn.Sequential(nn.ConvTranspose2d(2 * width + k, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(width + k, schema.channels, 4, 2, 1)

    @staticmethod
    def _with_class_maps(x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        maps = onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3]).to(x.dtype)
        return torch.cat([x, maps], 1)

    def decode(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        x = self.from_latent(torch.cat([z, onehot], 1)).view(-1, *self.grid)
        x = self.up1(self._with_class_maps(x, onehot))
        return self.up2(self._with_class_maps(x, onehot))

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        onehot = F.one_hot(labels, self.schema.num_classes).float()
        features = self.encoder(self._with_class_maps(images, onehot))
        stats = self.to_stats(self.to_hidden(torch.cat([features, onehot], 1)))
        mu, logvar = stats.chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, onehot), mu, logvar


class ConditionalVAE(ImageModel):
    name = "cvae"
    trained = ("vae",)
    defaults = {"latent_dim": 16, "width": 32, "hidden": 256, "learning_rate": 1e-3, "batch_size": 128, "epochs": 30}

    def build(self, schema: ImageSchema, config: dict[str, Any]) -> dict[str, nn.Module]:
        return {"vae": self.sampler(schema, config)}

    def sampler(self, schema: ImageSchema, config: dict[str, Any]) -> nn.Module:
        return _CVAE(schema, config["latent_dim"], config["width"], config["hidden"])

    def sampler_name(self) -> str:
        return "vae"

    def optimizers(self, networks: dict[str, nn.Module], config: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        return {"vae": adam(networks["vae"].parameters(), lr=config["learning_rate"])}

    def noise_dim(self, config: dict[str, Any]) -> int:
        return config["latent_dim"]

    def training_step(self, networks: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                      optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        logits, mu, logvar = networks["vae"](images, labels)
        n = images.shape[0]
        reconstruction = F.binary_cross_entropy_with_logits(logits.float(), images.float(), reduction="sum") / n
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
        loss = reconstruction + kl
        optimizers["vae"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["vae"].step()
        return {"loss": loss.detach(), "reconstruction": reconstruction.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def sample(self, sampler: nn.Module, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, sampler.schema.num_classes).float()
        return torch.sigmoid(sampler.decode(noise, onehot).float())
