"""What the tabular generators (`tvae`, `ctgan`) share: their schema, output activations,
per-span reconstruction losses and the condition vectors they train on."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch.nn import functional as F

from synth.tabular import TableEncoder


@dataclass(frozen=True)
class TableSchema:
    """What a tabular generator produces: rows in the layout of a fitted `TableEncoder`."""

    encoder: str
    """`TableEncoder.to_json()`."""

    @cached_property
    def table(self) -> TableEncoder:
        return TableEncoder.from_json(self.encoder)

    @property
    def values_per_row(self) -> int:
        return self.table.width


def table_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
    return (batch["features"].float(),)


def activate(raw: torch.Tensor, encoder: TableEncoder, gumbel_tau: float | None = None) -> torch.Tensor:
    """Generator outputs → encoded rows: tanh offsets, (Gumbel-)softmax one-hots, sigmoid bits."""
    parts = []
    for span in encoder.spans:
        block = raw[:, span.start:span.start + span.width]
        if span.activation == "tanh":
            parts.append(torch.tanh(block))
        elif span.activation == "sigmoid":
            parts.append(torch.sigmoid(block))
        elif gumbel_tau is not None:
            parts.append(F.gumbel_softmax(block, tau=gumbel_tau))
        else:
            parts.append(torch.softmax(block, dim=1))
    return torch.cat(parts, dim=1)


def reconstruction_loss(raw: torch.Tensor, target: torch.Tensor, encoder: TableEncoder,
                        sigmas: torch.Tensor) -> torch.Tensor:
    """Summed per-row negative log-likelihood of `target` under the decoder's outputs: Gaussian
    (learned σ per offset) for offsets, cross-entropy for one-hots, Bernoulli for bits."""
    total, offset_index = raw.new_zeros(()), 0
    for span in encoder.spans:
        block, truth = raw[:, span.start:span.start + span.width], target[:, span.start:span.start + span.width]
        if span.activation == "tanh":
            sigma = sigmas[offset_index]
            offset_index += 1
            total = total + ((truth[:, 0] - torch.tanh(block[:, 0])) ** 2 / (2 * sigma ** 2)).sum() \
                + torch.log(sigma) * len(block)
        elif span.activation == "sigmoid":
            total = total + F.binary_cross_entropy_with_logits(block, truth, reduction="sum")
        else:
            total = total + F.cross_entropy(block, truth.argmax(1), reduction="sum")
    return total


def offsets(encoder: TableEncoder) -> int:
    return sum(span.activation == "tanh" for span in encoder.spans)


def condition_batch(features: torch.Tensor, encoder: TableEncoder, log_frequency: bool,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, condition vectors and conditioned columns for one batch (training-by-sampling).

    Each output row fixes one discrete column to the value a real row has. With
    `log_frequency` (CTGAN), (row, column) pairs are drawn with weight p_c(v) / count_c(v),
    p_c ∝ log(1 + count): as if a column were picked uniformly, then a value by its
    log-frequency, then a real row holding it, so rare categories are seen often; the
    batch is resampled accordingly. Otherwise every row keeps its place and conditions on
    a uniformly chosen column. The encoder's `primary` column (the target) takes half of
    all conditions either way, since sampling conditions on it by default.
    """
    n, device = features.shape[0], features.device
    discrete = encoder.discrete
    if not discrete:
        return torch.arange(n, device=device), features.new_zeros((n, 0)), torch.zeros(n, dtype=torch.long, device=device)
    categories = torch.stack([features[:, d.start:d.start + d.size].argmax(1) for d in discrete], 1)
    names = [d.name for d in discrete]
    column_weight = torch.ones(len(discrete), device=device)
    if encoder.primary in names and len(discrete) > 1:
        column_weight[names.index(encoder.primary)] = len(discrete) - 1
    if log_frequency:
        weights = []
        for j, item in enumerate(discrete):
            counts = torch.tensor(item.counts, dtype=torch.float32, device=device)
            share = torch.log1p(counts) / torch.log1p(counts).sum()
            weights.append(share[categories[:, j]] / counts[categories[:, j]] * column_weight[j])
        picks = torch.multinomial(torch.stack(weights, 1).flatten(), n, replacement=True, generator=generator)
        rows, columns = picks // len(discrete), picks % len(discrete)
    else:
        rows = torch.arange(n, device=device)
        columns = torch.multinomial(column_weight, n, replacement=True, generator=generator)
    starts = torch.tensor([d.cond_start for d in discrete], device=device)
    cond = features.new_zeros((n, encoder.cond_width))
    cond[torch.arange(n, device=device), starts[columns] + categories[rows, columns]] = 1.0
    return rows, cond, columns


def condition_loss(raw: torch.Tensor, cond: torch.Tensor, columns: torch.Tensor, encoder: TableEncoder) -> torch.Tensor:
    """Mean cross-entropy between the generated one-hot of each row's conditioned column and
    the value asked for (CTGAN's generator penalty)."""
    total = raw.new_zeros(())
    for j, item in enumerate(encoder.discrete):
        chosen = columns == j
        if chosen.any():
            logits = raw[chosen, item.start:item.start + item.size]
            target = cond[chosen, item.cond_start:item.cond_start + item.size].argmax(1)
            total = total + F.cross_entropy(logits, target, reduction="sum")
    return total / max(len(raw), 1)
