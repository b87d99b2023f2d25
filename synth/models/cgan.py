"""Class-conditional GAN with a hinge loss, spectral normalisation, DiffAugment and a
generator EMA; resolution-general (`synth.models.blocks`).

Generator: the latent and a class embedding projected onto the bottom grid, one residual
up block per octave with class-conditional batch norm, sigmoid output in [0, 1].
Discriminator: one spectrally normalised residual down block per octave and a projection
head (Miyato & Koyama 2018): D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩. Every image the
discriminator sees, real or fake, in its step and the generator's, first goes through
DiffAugment (`diffaugment`, default colour, translation and cutout), which keeps it from
memorising a few thousand photos. Samples come from an exponential moving average of the
generator's weights, which is smoother than the raw generator.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from synth.models.augment import diff_augment, parse_policy
from synth.models.base import ImageModel, ImageSchema, adam, ema_update
from synth.models.blocks import Decoder, Encoder

FEATURES = 256


class _Generator(nn.Module):
    def __init__(self, schema: ImageSchema, latent_dim: int, width: int):
        super().__init__()
        self.schema, self.latent_dim = schema, latent_dim
        self.decoder = Decoder(schema.height, schema.width, schema.channels, schema.num_classes, latent_dim, width)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(noise, labels).float())


class _Discriminator(nn.Module):
    def __init__(self, schema: ImageSchema, width: int):
        super().__init__()
        encoder = Encoder(schema.height, schema.width, schema.channels, width, spectral=True)
        self.features = nn.Sequential(encoder, spectral_norm(nn.Linear(encoder.features, FEATURES)), nn.LeakyReLU(0.2))
        self.score = spectral_norm(nn.Linear(FEATURES, 1))
        self.embed = spectral_norm(nn.Embedding(schema.num_classes, FEATURES))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(images)
        return self.score(h).squeeze(1) + (self.embed(labels) * h).sum(1)


class ConditionalGAN(ImageModel):
    name = "cgan"
    trained = ("generator", "discriminator")
    # Small batches: a GAN needs many updates, and 30 epochs of 8,000 images at 128 are few.
    defaults = {"latent_dim": 64, "width": 32, "learning_rate": 2e-4, "ema_decay": 0.995, "batch_size": 64, "epochs": 30,
                "diffaugment": "color,translation,cutout"}

    def build(self, schema: ImageSchema, config: dict[str, Any]) -> dict[str, nn.Module]:
        generator = self.sampler(schema, config)
        ema = copy.deepcopy(generator).requires_grad_(False)
        ema.decay = config["ema_decay"]
        ema.policy = parse_policy(config["diffaugment"])
        return {"generator": generator, "discriminator": _Discriminator(schema, config["width"]), "ema": ema}

    def sampler(self, schema: ImageSchema, config: dict[str, Any]) -> nn.Module:
        return _Generator(schema, config["latent_dim"], config["width"])

    def sampler_name(self) -> str:
        return "ema"

    def optimizers(self, networks: dict[str, nn.Module], config: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        lr = config["learning_rate"]
        return {"generator": adam(networks["generator"].parameters(), lr=lr, betas=(0.5, 0.999)),
                "discriminator": adam(networks["discriminator"].parameters(), lr=lr, betas=(0.5, 0.999))}

    def noise_dim(self, config: dict[str, Any], schema: ImageSchema) -> int:
        return config["latent_dim"]

    def training_step(self, networks: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                      optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        generator, discriminator, ema = networks["generator"], networks["discriminator"], networks["ema"]
        noise = torch.randn(images.shape[0], ema.latent_dim, device=images.device)
        fake = generator(noise, labels)
        # One discriminator call on real and fake together (one forward per backward under DDP).
        both = diff_augment(torch.cat([images, fake.detach().to(images.dtype)]), ema.policy)
        scores = discriminator(both, torch.cat([labels, labels]))
        real_score, fake_score = scores.float().chunk(2)
        d_loss = F.relu(1 - real_score).mean() + F.relu(1 + fake_score).mean()
        optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["discriminator"].step()

        g_loss = -discriminator(diff_augment(fake.to(images.dtype), ema.policy), labels).float().mean()
        optimizers["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        optimizers["generator"].step()
        ema_update(ema, generator, ema.decay)
        return {"loss": (d_loss + g_loss).detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    @torch.no_grad()
    def sample(self, sampler: nn.Module, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return sampler(noise, labels)
