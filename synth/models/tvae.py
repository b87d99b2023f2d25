"""`tvae`: a conditional tabular VAE (TVAE-style: MLP encoder/decoder over the mode-specific
encoding, a learned σ per numeric offset), conditioned on one discrete column per row so
any categorical value can be asked for at sampling time."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from synth.models.base import adam
from synth.models.table import SpanLayout, TableSchema, condition_batch, draw, offsets, reconstruction_loss, table_inputs


def _mlp(width_in: int, hidden: int, layers: int) -> nn.Sequential:
    blocks, width = [], width_in
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*blocks)


class _TVAE(nn.Module):
    def __init__(self, schema: TableSchema, latent_dim: int, hidden: int):
        super().__init__()
        encoder = schema.table
        self.encoder_net = nn.Sequential(_mlp(encoder.width + encoder.cond_width, hidden, 2),
                                         nn.Linear(hidden, 2 * latent_dim))
        self.decoder_net = nn.Sequential(_mlp(latent_dim + encoder.cond_width, hidden, 2), nn.Linear(hidden, encoder.width))
        self.log_sigma = nn.Parameter(torch.full((offsets(encoder),), -2.3))  # σ starts at 0.1

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.decoder_net(torch.cat([z, cond], 1))

    def forward(self, features: torch.Tensor, cond: torch.Tensor):
        mu, logvar = self.encoder_net(torch.cat([features, cond], 1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, cond), mu, logvar


class TabularVAE:
    name = "tvae"
    modality = "table"
    schema_type = TableSchema
    trained = ("vae",)
    min_steps = 0
    defaults = {"latent_dim": 128, "hidden": 128, "learning_rate": 1e-3, "batch_size": 500, "epochs": 300,
                "loss_factor": 2.0}

    def build(self, schema: TableSchema, config: dict[str, Any]) -> dict[str, nn.Module]:
        self.config = config  # the loss settings `training_step` reads
        return {"vae": self.sampler(schema, config)}

    def sampler(self, schema: TableSchema, config: dict[str, Any]) -> nn.Module:
        module = _TVAE(schema, config["latent_dim"], config["hidden"])
        module.schema = schema
        return module

    def sampler_name(self) -> str:
        return "vae"

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        return table_inputs(batch)

    def optimizers(self, networks: dict[str, nn.Module], config: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        return {"vae": adam(networks["vae"].parameters(), lr=config["learning_rate"], weight_decay=1e-5)}

    def noise_dim(self, config: dict[str, Any], schema: TableSchema) -> int:
        """The latent code, then one standard normal per encoded column: an offset's Gaussian
        noise (scaled by its σ), or the draw of a one-hot or code bit (see `draw`)."""
        return config["latent_dim"] + schema.table.width

    def training_step(self, networks: dict[str, nn.Module], features: torch.Tensor,
                      optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        config = self.config
        vae = networks["vae"]
        encoder = _schema(vae).table
        _, cond, _ = condition_batch(features, encoder, log_frequency=False)
        raw, mu, logvar = vae(features, cond)
        n = features.shape[0]
        sigmas = torch.exp(_module(vae).log_sigma).clamp(0.01, 1.0)
        reconstruction = reconstruction_loss(raw.float(), features, encoder, sigmas) / n
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
        loss = config["loss_factor"] * reconstruction + kl
        optimizers["vae"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["vae"].step()
        return {"loss": loss.detach(), "reconstruction": reconstruction.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def sample(self, sampler: nn.Module, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Rows drawn from the decoder's distribution: each numeric offset around the decoder's
        mean with its learned σ, each one-hot and code bit from its probabilities."""
        encoder = sampler.schema.table
        latent = noise.shape[1] - encoder.width
        per_column = noise[:, latent:]
        rows = draw(sampler.decode(noise[:, :latent], cond).float(), encoder, per_column)
        is_offset = SpanLayout.of(encoder, rows.device).is_offset
        sigmas = torch.exp(sampler.log_sigma).clamp(0.01, 1.0)
        rows[:, is_offset] += per_column[:, is_offset] * sigmas
        return rows


def _module(network: nn.Module) -> nn.Module:
    return network.module if hasattr(network, "module") else network


def _schema(network: nn.Module) -> TableSchema:
    return _module(network).schema
