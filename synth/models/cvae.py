"""Convolutional conditional VAE, resolution-general (`synth.models.blocks`).

Encoder: one batch-normalised residual down block per octave; the class joins the
features (one-hot) before the posterior's statistics. Decoder: the latent and a class
embedding projected onto the bottom grid, one residual up block per octave with
class-conditional batch norm (so the decoder cannot ignore the class in favour of the
latent). Pixels are Bernoulli means (BCE with logits); a sample is the decoder's mean image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from synth.models.base import ImageModel, ImageSchema, adam
from synth.models.blocks import Decoder, Encoder


class _CVAE(nn.Module):
    def __init__(self, schema: ImageSchema, latent_dim: int, width: int, hidden: int):
        super().__init__()
        self.schema, self.latent_dim = schema, latent_dim
        k = schema.num_classes
        self.encoder = Encoder(schema.height, schema.width, schema.channels, width, spectral=False)
        self.to_hidden = nn.Sequential(nn.Linear(self.encoder.features + k, hidden), nn.LeakyReLU(0.2))
        self.to_stats = nn.Linear(hidden, 2 * latent_dim)
        self.decoder = Decoder(schema.height, schema.width, schema.channels, k, latent_dim, width)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        onehot = F.one_hot(labels, self.schema.num_classes).to(images.dtype)
        stats = self.to_stats(self.to_hidden(torch.cat([self.encoder(images), onehot], 1)))
        mu, logvar = stats.chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, labels), mu, logvar


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

    def noise_dim(self, config: dict[str, Any], schema: ImageSchema) -> int:
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
        return torch.sigmoid(sampler.decode(noise, labels).float())
