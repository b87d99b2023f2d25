"""What the tabular generators (`tvae`, `ctgan`) share: their schema, output activations,
per-span reconstruction losses and the condition vectors they train on, each computed for
all spans at once through a `SpanLayout`."""

from __future__ import annotations

import weakref
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


class SpanLayout:
    """An encoder's spans as index tensors and 0/1 matrices, so a batch's activations and
    losses are a handful of whole-batch ops rather than a few small ops per span: a softmax in
    every span at once is an exp and one product with the (column, column) same-span matrix."""

    def __init__(self, encoder: TableEncoder, device: torch.device):
        spans, discrete, width = encoder.spans, encoder.discrete, encoder.width
        activation = [""] * width
        for span in spans:
            activation[span.start:span.start + span.width] = [span.activation] * span.width
        softmax_spans = [s for s in spans if s.activation == "softmax"]
        segment = torch.full((width,), len(softmax_spans), dtype=torch.long)  # other columns share one extra
        for i, span in enumerate(softmax_spans):
            segment[span.start:span.start + span.width] = i

        def where(kind: str) -> torch.Tensor:
            return torch.tensor([a == kind for a in activation], device=device)

        self.is_offset, self.is_bit, self.is_softmax = where("tanh"), where("sigmoid"), where("softmax")
        self.offsets = torch.nonzero(self.is_offset).flatten()
        self.bits = torch.nonzero(self.is_bit).flatten()
        self.segment = segment.to(device)
        membership = F.one_hot(segment, len(softmax_spans) + 1).float()
        self.same_span = (membership @ membership.T).to(device)
        # Each span's columns padded to the widest by repeating its last column, so a view
        # of one index_select holds every span and its max needs no mask.
        widest = max((s.width for s in softmax_spans), default=1)
        span_columns = torch.zeros(len(softmax_spans) + 1, widest, dtype=torch.long)
        for i, span in enumerate(softmax_spans):
            span_columns[i] = torch.arange(span.start, span.start + widest).clamp(max=span.start + span.width - 1)
        self.span_columns, self.widest = span_columns.flatten().to(device), widest
        # Conditionable columns: where each condition slot sits in the encoded row, and which
        # category each encoded column stands for (read off a one-hot with one product).
        placement = torch.zeros(encoder.cond_width, width)
        category_reader = torch.zeros(width, len(discrete))
        for j, item in enumerate(discrete):
            placement[item.cond_start + torch.arange(item.size), item.start + torch.arange(item.size)] = 1.0
            category_reader[item.start:item.start + item.size, j] = torch.arange(item.size, dtype=torch.float32)
        self.placement, self.category_reader = placement.to(device), category_reader.to(device)
        self.cond_starts = torch.tensor([d.cond_start for d in discrete], dtype=torch.long, device=device)
        # Training-by-sampling weight of each (column, category) pair: p_c(v) / count_c(v) with
        # p_c ∝ log(1 + count); the encoder's `primary` column counts as much as all others.
        self.column_weight = torch.ones(len(discrete), device=device)
        names = [d.name for d in discrete]
        if encoder.primary in names and len(discrete) > 1:
            self.column_weight[names.index(encoder.primary)] = len(discrete) - 1
        self.pair_weight = torch.zeros(len(discrete), max((d.size for d in discrete), default=1), device=device)
        for j, item in enumerate(discrete):
            counts = torch.tensor(item.counts, dtype=torch.float32, device=device)
            self.pair_weight[j, :item.size] = torch.log1p(counts) / torch.log1p(counts).sum() / counts * self.column_weight[j]

    @staticmethod
    def of(encoder: TableEncoder, device: torch.device) -> SpanLayout:
        """The layout of `encoder` on `device`, built once per encoder and device."""
        layouts = _LAYOUTS.setdefault(encoder, {})
        if device not in layouts:
            with torch.autocast(device.type, enabled=False):
                layouts[device] = SpanLayout(encoder, device)
        return layouts[device]

    def _shifted(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax-span logits less their span's maximum (so exp cannot overflow); 0 elsewhere."""
        peak = logits.detach().index_select(1, self.span_columns).view(len(logits), -1, self.widest).amax(2)
        return torch.where(self.is_softmax, logits - peak.index_select(1, self.segment), 0.0)

    def _span_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Each column's span total, in fp32 even under autocast."""
        with torch.autocast(values.device.type, enabled=False):
            return values.float() @ self.same_span

    def softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """A softmax within every softmax span (other columns: meaningless, mask them)."""
        exp = torch.exp(self._shifted(logits))
        return exp / self._span_sums(exp)

    def log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        shifted = self._shifted(logits)
        return shifted - torch.log(self._span_sums(torch.exp(shifted)))

    def categories(self, rows: torch.Tensor) -> torch.Tensor:
        """`(rows, conditionable columns)`: the category index of each one-hot."""
        with torch.autocast(rows.device.type, enabled=False):
            return (rows.float() @ self.category_reader).round().long()


_LAYOUTS: weakref.WeakKeyDictionary[TableEncoder, dict[torch.device, SpanLayout]] = weakref.WeakKeyDictionary()


def activate(raw: torch.Tensor, encoder: TableEncoder, gumbel_tau: float | None = None) -> torch.Tensor:
    """Generator outputs → encoded rows: tanh offsets, (Gumbel-)softmax one-hots, sigmoid bits."""
    layout = SpanLayout.of(encoder, raw.device)
    logits = raw
    if gumbel_tau is not None:  # Gumbel noise as -log(-log U): far cheaper on CPU than exponential_
        uniform = torch.rand_like(raw).clamp_(min=torch.finfo(raw.dtype).tiny)
        logits = (raw - torch.log(-torch.log(uniform))) / gumbel_tau
    return torch.where(layout.is_offset, torch.tanh(raw),
                       torch.where(layout.is_bit, torch.sigmoid(raw), layout.softmax(logits)))


def draw(raw: torch.Tensor, encoder: TableEncoder, noise: torch.Tensor) -> torch.Tensor:
    """Rows drawn from the distribution that generator outputs `raw` define, as encoded rows:
    each one-hot span a category drawn from its softmax (Gumbel-max), each code bit drawn from
    its sigmoid, offsets tanh(raw). Reading one-hots by argmax instead would give every row its
    most likely category and mode: marginals collapse towards the majority (bank, 900 ctgan
    steps: quality 0.72 read by argmax, 0.92 drawn). `noise` holds one standard normal per
    encoded column (seeded per row, so a row's draw is reproducible), mapped to a uniform by
    the normal CDF; an offset column's normal is unused here (`tvae` adds it with its σ)."""
    layout = SpanLayout.of(encoder, raw.device)
    eps = torch.finfo(raw.dtype).eps
    uniform = torch.special.ndtr(noise.to(raw.dtype)).clamp(eps, 1 - eps)
    gumbel = -torch.log(-torch.log(uniform))
    one_hot = ((layout._shifted(raw + gumbel) == 0) & layout.is_softmax).to(raw.dtype)  # each span's maximum
    bits = (raw + torch.log(uniform) - torch.log1p(-uniform) > 0).to(raw.dtype)  # logistic noise
    return torch.where(layout.is_offset, torch.tanh(raw), torch.where(layout.is_bit, bits, one_hot))


def reconstruction_loss(raw: torch.Tensor, target: torch.Tensor, encoder: TableEncoder,
                        sigmas: torch.Tensor) -> torch.Tensor:
    """Summed per-row negative log-likelihood of `target` under the decoder's outputs: Gaussian
    (learned σ per offset) for offsets, cross-entropy for one-hots, Bernoulli for bits."""
    layout = SpanLayout.of(encoder, raw.device)
    offset_error = target.index_select(1, layout.offsets) - torch.tanh(raw.index_select(1, layout.offsets))
    gaussian = (offset_error ** 2 / (2 * sigmas ** 2)).sum() + torch.log(sigmas).sum() * len(raw)
    bernoulli = F.binary_cross_entropy_with_logits(raw.index_select(1, layout.bits), target.index_select(1, layout.bits),
                                                   reduction="sum")
    categorical = -(layout.log_softmax(raw) * target * layout.is_softmax).sum()
    return gaussian + bernoulli + categorical


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
    if not encoder.discrete:
        return torch.arange(n, device=device), features.new_zeros((n, 0)), torch.zeros(n, dtype=torch.long, device=device)
    layout = SpanLayout.of(encoder, device)
    categories = layout.categories(features)
    if log_frequency:
        weights = layout.pair_weight.gather(1, categories.T).T  # (rows, columns)
        picks = torch.multinomial(weights.flatten(), n, replacement=True, generator=generator)
        rows, columns = picks // categories.shape[1], picks % categories.shape[1]
    else:
        rows = torch.arange(n, device=device)
        columns = torch.multinomial(layout.column_weight, n, replacement=True, generator=generator)
    cond = features.new_zeros((n, encoder.cond_width))
    cond[torch.arange(n, device=device), layout.cond_starts[columns] + categories[rows, columns]] = 1.0
    return rows, cond, columns


def condition_loss(raw: torch.Tensor, cond: torch.Tensor, columns: torch.Tensor, encoder: TableEncoder) -> torch.Tensor:
    """Mean cross-entropy between the generated one-hot of each row's conditioned column and
    the value asked for (CTGAN's generator penalty)."""
    if not encoder.discrete:
        return raw.new_zeros(())
    layout = SpanLayout.of(encoder, raw.device)
    asked = cond @ layout.placement  # each row's condition, placed on its column's one-hot
    return -(layout.log_softmax(raw) * asked).sum() / max(len(raw), 1)
