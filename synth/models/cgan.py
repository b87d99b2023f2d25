"""Class-conditional DCGAN with a hinge loss, spectral normalisation and a generator EMA.

Generator: latent + one-hot → (2w, S/4, S/4) → two stride-2 transposed convolutions, with
the class as constant channels at each resolution; sigmoid output in [0, 1].
Discriminator: spectrally normalised convolutions and a projection head (Miyato & Koyama
2018): D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩. Samples come from an exponential moving
average of the generator's weights, which is smoother than the raw generator.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from synth.models.base import ImageModel, ImageSchema, adam, ema_update


def _with_class_maps(x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    maps = onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3]).to(x.dtype)
    return torch.cat([x, maps], 1)


class _Generator(nn.Module):
    def __init__(self, schema: ImageSchema, latent_dim: int, width: int):
        super().__init__()
        self.schema, self.latent_dim = schema, latent_dim
        k = schema.num_classes
        self.grid = (2 * width, schema.height // 4, schema.width // 4)
        self.project = nn.Sequential(nn.Linear(latent_dim + k, self.grid[0] * self.grid[1] * self.grid[2]),
                                     nn.BatchNorm1d(self.grid[0] * self.grid[1] * self.grid[2]), nn.ReLU())
        self.up1 = nn.Sequential(nn.ConvTranspose2d(2 * width + k, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(width + k, schema.channels, 4, 2, 1)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, self.schema.num_classes).float()
        x = self.project(torch.cat([noise, onehot], 1)).view(-1, *self.grid)
        x = self.up1(_with_class_maps(x, onehot))
        return torch.sigmoid(self.up2(_with_class_maps(x, onehot)).float())


class _Discriminator(nn.Module):
    def __init__(self, schema: ImageSchema, width: int):
        super().__init__()
        flat = 2 * width * (schema.height // 4) * (schema.width // 4)
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(schema.channels, width, 4, 2, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2),
            nn.Flatten(), spectral_norm(nn.Linear(flat, 256)), nn.LeakyReLU(0.2),
        )
        self.score = spectral_norm(nn.Linear(256, 1))
        self.embed = spectral_norm(nn.Embedding(schema.num_classes, 256))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(images)
        return self.score(h).squeeze(1) + (self.embed(labels) * h).sum(1)


class ConditionalGAN(ImageModel):
    name = "cgan"
    trained = ("generator", "discriminator")
    # Small batches: a GAN needs many updates, and 30 epochs of 8,000 images at 128 are few.
    defaults = {"latent_dim": 64, "width": 64, "learning_rate": 2e-4, "ema_decay": 0.995, "batch_size": 64, "epochs": 30}

    def build(self, schema: ImageSchema, config: dict[str, Any]) -> dict[str, nn.Module]:
        generator = self.sampler(schema, config)
        ema = copy.deepcopy(generator).requires_grad_(False)
        ema.decay = config["ema_decay"]
        return {"generator": generator, "discriminator": _Discriminator(schema, config["width"]), "ema": ema}

    def sampler(self, schema: ImageSchema, config: dict[str, Any]) -> nn.Module:
        return _Generator(schema, config["latent_dim"], config["width"])

    def sampler_name(self) -> str:
        return "ema"

    def optimizers(self, networks: dict[str, nn.Module], config: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        lr = config["learning_rate"]
        return {"generator": adam(networks["generator"].parameters(), lr=lr, betas=(0.5, 0.999)),
                "discriminator": adam(networks["discriminator"].parameters(), lr=lr, betas=(0.5, 0.999))}

    def noise_dim(self, config: dict[str, Any]) -> int:
        return config["latent_dim"]

    def training_step(self, networks: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                      optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        generator, discriminator, ema = networks["generator"], networks["discriminator"], networks["ema"]
        noise = torch.randn(images.shape[0], ema.latent_dim, device=images.device)
        fake = generator(noise, labels)
        # One discriminator call on real and fake together (one forward per backward under DDP).
        scores = discriminator(torch.cat([images, fake.detach().to(images.dtype)]), torch.cat([labels, labels]))
        real_score, fake_score = scores.float().chunk(2)
        d_loss = F.relu(1 - real_score).mean() + F.relu(1 + fake_score).mean()
        optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["discriminator"].step()

        g_loss = -discriminator(fake.to(images.dtype), labels).float().mean()
        optimizers["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        optimizers["generator"].step()
        ema_update(ema, generator, ema.decay)
        return {"loss": (d_loss + g_loss).detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    @torch.no_grad()
    def sample(self, sampler: nn.Module, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return sampler(noise, labels)
