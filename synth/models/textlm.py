"""`textlm`: a class-conditional decoder-only transformer trained from scratch.

Each document is `[<class_k>, tokens…, <eos>]` (`synth.text.TextTokenizer`), packed with
others into training rows; the model learns every next token after the class token, so a
class is asked for by starting from its token. Pre-norm blocks, causal
`scaled_dot_product_attention` kept inside each packed document, learned positions that
restart at each document, the output head tied to the token embedding. Sampling runs every row of a batch
at once with a key/value cache, at a temperature and with nucleus (top-p) truncation; each
step's draw is the inverse CDF at a uniform taken from the row's own seeded noise, so a row
is the same text under any batch size or number of sampler actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from synth.models.base import adam
from synth.text import TextTokenizer


@dataclass(frozen=True)
class TextSchema:
    """What the language model produces: token rows of a fitted `TextTokenizer`."""

    tokenizer: str
    """`TextTokenizer.to_json()`."""
    num_classes: int

    @cached_property
    def text(self) -> TextTokenizer:
        return TextTokenizer.from_json(self.tokenizer)

    @property
    def values_per_row(self) -> int:
        return self.text.max_tokens


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        n, t, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:  # sampling: attend to every earlier position too
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(n, t, width)))
        return x + self.drop(self.mlp(self.norm2(x))), (k, v)


class _Decoder(nn.Module):
    def __init__(self, vocab: int, positions: int, width: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(positions, width)
        self.blocks = nn.ModuleList(_Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, ids: torch.Tensor, segments: torch.Tensor):
        """Logits for every position of packed rows (`segments`: 1, 2, … per document, 0 for padding)."""
        t = ids.shape[1]
        index = torch.arange(t, device=ids.device)
        starts = torch.ones_like(segments, dtype=torch.bool)
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
        first = torch.cummax(torch.where(starts, index, 0), dim=1).values  # where each position's document starts
        mask = (segments[:, :, None] == segments[:, None, :]) & (index[None, :, None] >= index[None, None, :])
        x = self.drop(self.tokens(ids) + self.positions(index - first))
        for block in self.blocks:
            x, _ = block(x, mask[:, None])
        return self.norm(x) @ self.tokens.weight.T

    def step(self, ids: torch.Tensor, start: int, caches: list | None):
        """Sampling: logits for `ids` at positions `start`… of one document each, after the
        cached keys and values; the updated caches."""
        x = self.tokens(ids) + self.positions(torch.arange(start, start + ids.shape[1], device=ids.device))
        new = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None, None if caches is None else caches[i])
            new.append(kv)
        return self.norm(x) @ self.tokens.weight.T, new


class TextLM:
    name = "textlm"
    modality = "text"
    schema_type = TextSchema
    trained = ("lm",)
    min_steps = 1000
    max_steps = 3000
    """About 4M tokens at the default batch (16 rows of up to 256 tokens): 30 epochs of the SMS
    corpus, one of a corpus of 50,000 short documents."""
    defaults = {"width": 128, "layers": 3, "heads": 4, "dropout": 0.1, "vocab_size": 2048, "max_tokens": 256,
                "learning_rate": 1e-3, "batch_size": 16, "epochs": 30, "temperature": 1.0, "top_p": 0.95}

    def build(self, schema: TextSchema, config: dict[str, Any]) -> dict[str, nn.Module]:
        self.config = config
        return {"lm": self.sampler(schema, config)}

    def sampler(self, schema: TextSchema, config: dict[str, Any]) -> nn.Module:
        text = schema.text
        module = _Decoder(text.vocab_size, text.max_tokens, config["width"], config["layers"], config["heads"],
                          config["dropout"])
        module.schema = schema
        return module

    def sampler_name(self) -> str:
        return "lm"

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed rows (`synth.text.TextTokenizer.pack`) → token ids and segment ids."""
        rows = batch["features"].long()
        return rows[:, 0], rows[:, 1]

    def optimizers(self, networks: dict[str, nn.Module], config: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        return {"lm": adam(networks["lm"].parameters(), lr=config["learning_rate"], betas=(0.9, 0.98))}

    def noise_dim(self, config: dict[str, Any], schema: TextSchema) -> int:
        """One standard normal per generated token (its uniform draw is Φ of it)."""
        return schema.text.max_tokens

    def training_step(self, networks: dict[str, nn.Module], ids: torch.Tensor, segments: torch.Tensor,
                      optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
        lm = networks["lm"]
        used = int((segments > 0).sum(dim=1).max())  # no work on columns that are padding in every row
        ids, segments = ids[:, :used], segments[:, :used]
        logits = lm(ids[:, :-1], segments[:, :-1])
        # Each position predicts the next token of its own document (not the next document's class).
        targets = torch.where((segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0), ids[:, 1:], -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
        optimizers["lm"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizers["lm"].step()
        return {"loss": loss.detach(), "perplexity": torch.exp(loss.detach())}

    @torch.no_grad()
    def sample(self, sampler: nn.Module, labels: torch.Tensor, noise: torch.Tensor, temperature: float = 1.0,
               top_p: float = 0.95) -> torch.Tensor:
        """(rows, max_tokens - 1) token ids after each row's class token (padding after its end)."""
        text = sampler.schema.text
        uniforms = torch.special.ndtr(noise.double()).clamp(1e-12, 1 - 1e-12)
        class_ids = torch.tensor([text.class_id(int(k)) for k in labels], dtype=torch.long)
        ids = class_ids[:, None]
        out = torch.full((len(labels), text.max_tokens - 1), text.pad_id, dtype=torch.long)
        done = torch.zeros(len(labels), dtype=torch.bool)
        caches, start = None, 0
        for step in range(text.max_tokens - 1):
            logits, caches = sampler.step(ids, start, caches)
            start += ids.shape[1]
            probs = torch.softmax(logits[:, -1].double() / temperature, dim=-1)
            probs[:, [text.pad_id] + [text.class_id(k) for k in range(sampler.schema.num_classes)]] = 0.0
            token = _nucleus_draw(probs, top_p, uniforms[:, step])
            token[done] = text.pad_id
            out[:, step] = token
            done |= token == text.eos_id
            if bool(done.all()):
                break
            ids = token[:, None]
        return out


def _nucleus_draw(probs: torch.Tensor, top_p: float, uniform: torch.Tensor) -> torch.Tensor:
    """The token at `uniform` of the CDF over the smallest most-probable set holding `top_p`."""
    ordered, order = probs.sort(dim=-1, descending=True)
    cumulative = ordered.cumsum(dim=-1)
    keep = cumulative - ordered < top_p  # the first token is always kept
    ordered = ordered * keep
    cdf = ordered.cumsum(dim=-1)
    cdf = cdf / cdf[:, -1:]
    index = torch.searchsorted(cdf, uniform[:, None].to(cdf.dtype).contiguous()).clamp(max=probs.shape[-1] - 1)
    return order.gather(1, index).squeeze(1)


def _schema(network: nn.Module) -> TextSchema:
    return (network.module if hasattr(network, "module") else network).schema

