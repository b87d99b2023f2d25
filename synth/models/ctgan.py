"""`ctgan`: a conditional tabular GAN in the CTGAN style — residual MLP generator with
Gumbel-softmax one-hots, PacGAN discriminator (`pac` rows judged together) trained with
WGAN-GP, conditional vectors with training-by-sampling, and a cross-entropy penalty that
makes the generator honour its condition. Samples come from an exponential moving average
of the generator's weights (steadier marginals than the last step's weights)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from synth.models.base import adam, ema_update, unwrap
from synth.models.table import TableSchema, activate, condition_batch, condition_loss, draw, table_inputs


class _Residual(nn.Module):
    def __init__(self, width_in: int, width_out: int):
        super().__init__()
        self.linear, self.norm = nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(self.norm(self.linear(x))), x], dim=1)


class _Generator(nn.Module):
    def __init__(self, schema: TableSchema, latent_dim: int, hidden: int):
        super().__init__()
        encoder = schema.table
        width = latent_dim + encoder.cond_width
        self.body = nn.Sequential(_Residual(width, hidden), _Residual(width + hidden, hidden),
                                  nn.Linear(width + 2 * hidden, encoder.width))
        self.schema = schema

    def forward(self, noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([noise, cond], 1))


class _Dropout(nn.Module):
    """Inverted dropout from a uniform draw: on CPU, `nn.Dropout`'s bernoulli_ costs twice as much."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p) / (1 - self.p)


class _Discriminator(nn.Module):
    def __init__(self, schema: TableSchema, hidden: int, pac: int):
        super().__init__()
        encoder = schema.table
        self.pac = pac
        self.body = nn.Sequential(
            nn.Linear((encoder.width + encoder.cond_width) * pac, hidden), nn.LeakyReLU(0.2), _Dropout(0.5),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), _Dropout(0.5), nn.Linear(hidden, 1))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.body(rows.reshape(-1, rows.shape[1] * self.pac))


class TabularGAN:
    name = "ctgan"
    modality = "table"
    schema_type = TableSchema
    trained = ("generator", "discriminator")
    # 300 epochs of the bank table (9k rows, batch 500) are 5.4k steps: quality 0.92, TSTR F1
    # 0.90 of TRTR; 10k steps: 0.945 and 0.925. CTGAN's 300 epochs assume a larger table.
    min_steps = 10_000
    defaults = {"latent_dim": 128, "hidden": 256, "learning_rate": 2e-4, "batch_size": 500, "epochs": 300, "pac": 10,
                "gradient_penalty": 10.0, "gumbel_tau": 0.2, "ema_decay": 0.995}

    def build(self, schema: TableSchema, config: dict[str, Any]) -> dict[str, nn.Module]:
        self.config = config  # the loss settings `training_step` reads
        generator = self.sampler(schema, config)
        return {"generator": generator, "discriminator": _Discriminator(schema, config["hidden"], config["pac"]),
                "ema": copy.deepcopy(generator).requires_grad_(False)}

    def sampler(self, schema: TableSchema, config: dict[str, Any]) -> nn.Module:
        return _Generator(schema, config["latent_dim"], config["hidden"])

    def sampler_name(self) -> str:
        return "ema"

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        return table_inputs(batch)

    def optimizers(self, networks: dict[str, nn.Module], config: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        return {name: adam(networks[name].parameters(), lr=config["learning_rate"], betas=(0.5, 0.9),
                                       weight_decay=1e-6) for name in self.trained}

    def noise_dim(self, config: dict[str, Any], schema: TableSchema) -> int:
        """The latent code, then one standard normal per encoded column for `draw`."""
        return config["latent_dim"] + schema.table.width

    def training_step(self, networks: dict[str, nn.Module], features: torch.Tensor,
                      optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        config = self.config
        generator, discriminator = networks["generator"], networks["discriminator"]
        encoder = unwrap(generator).schema.table
        pac, tau = config["pac"], config["gumbel_tau"]
        usable = features.shape[0] // pac * pac  # PacGAN judges groups of `pac` rows
        if usable == 0:
            return {}
        features = features[:usable]

        rows, cond, columns = condition_batch(features, encoder, log_frequency=True)
        real = torch.cat([features[rows], cond], 1)
        noise = torch.randn(usable, config["latent_dim"], device=features.device)
        with torch.no_grad():
            fake = torch.cat([activate(generator(noise, cond), encoder, tau), cond], 1)
        d_loss, penalty = _critic_losses(discriminator, real, fake, pac)
        penalty = config["gradient_penalty"] * penalty
        optimizers["discriminator"].zero_grad(set_to_none=True)
        (d_loss + penalty).backward()
        optimizers["discriminator"].step()

        rows, cond, columns = condition_batch(features, encoder, log_frequency=True)
        noise = torch.randn(usable, config["latent_dim"], device=features.device)
        raw = generator(noise, cond)
        fake = torch.cat([activate(raw, encoder, tau), cond], 1)
        adversarial = -discriminator(fake).mean()
        honour = condition_loss(raw, cond, columns, encoder)
        optimizers["generator"].zero_grad(set_to_none=True)
        (adversarial + honour).backward()
        optimizers["generator"].step()
        ema_update(networks["ema"], generator, config["ema_decay"])
        return {"d_loss": d_loss.detach(), "penalty": penalty.detach(), "g_loss": adversarial.detach(),
                "condition": honour.detach()}

    @torch.no_grad()
    def sample(self, sampler: nn.Module, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        latent = noise.shape[1] - sampler.schema.table.width
        return draw(sampler(noise[:, :latent], cond).float(), sampler.schema.table, noise[:, latent:])


def _critic_losses(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                   pac: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The WGAN critic loss and its gradient penalty on interpolates (one mixing weight per
    pac group, as in CTGAN); fake and real rows are judged in one pass."""
    alpha = torch.rand(real.shape[0] // pac, 1, 1, device=real.device).repeat(1, pac, real.shape[1]).reshape(real.shape)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    fake_score, real_score = discriminator(torch.cat([fake, real])).chunk(2)
    gradients = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)[0]
    penalty = ((gradients.reshape(-1, pac * real.shape[1]).norm(2, dim=1) - 1) ** 2).mean()
    return fake_score.mean() - real_score.mean(), penalty
