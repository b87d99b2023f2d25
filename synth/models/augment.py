"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to real *and* fake
images wherever the discriminator sees them (its own step and the generator's), so the
discriminator cannot memorise a small training set and the generator is not taught the
augmentations. Images are (N, C, H, W) floats in [0, 1]; each image draws its own
parameters from torch's global generator (seeded by the training loop).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str) -> tuple[str, ...]:
    """`"color,translation,cutout"` → its parts (`""` or `"none"` → none); unknown parts raise."""
    parts = tuple(part.strip() for part in policy.split(",") if part.strip() and part.strip() != "none")
    unknown = [part for part in parts if part not in POLICIES]
    if unknown:
        raise ValueError(f"diffaugment: unknown policy '{unknown[0]}'; known: {', '.join(POLICIES)} (or none)")
    return parts


def _color(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    draw = lambda: torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype)  # noqa: E731
    x = x + (draw() - 0.5) * 0.5  # brightness: ±0.5 on DiffAugment's [-1, 1] scale
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (draw() * 2) + mean  # saturation (nothing to do on one channel)
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * (draw() + 0.5) + mean  # contrast


def _translation(x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    dy, dx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    shift_y = torch.randint(-dy, dy + 1, (n, 1, 1), device=x.device)
    shift_x = torch.randint(-dx, dx + 1, (n, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :, None] + shift_y + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device)[None, None, :] + shift_x + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))  # pixels shifted in from outside are 0
    index = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2).contiguous()


def _cutout(x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside)[:, None].to(x.dtype)


_AUGMENTS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    for part in policy:
        x = _AUGMENTS[part](x)
    return x
