"""Device handling shared by the Ray Train loop and the benchmarks (no Ray here).

On CUDA: bf16 autocast and channels_last; on CPU: plain fp32. One code path for both.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch


def to_model_input(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, C) images + labels → float [0, 1] (N, C, H, W) and int64 labels."""
    images = batch["image"].permute(0, 3, 1, 2).float().div_(255.0)
    if images.is_cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["label"].long()


def autocast_for(device: torch.device) -> AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def prepare_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to `device`; channels_last on CUDA (faster convolutions)."""
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module
