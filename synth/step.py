"""Device handling shared by the Ray Train loop and the benchmarks (no Ray here).

Precision on CUDA is `bf16` (autocast, channels_last modules and inputs) or `fp32`; on
CPU always fp32. `auto` picks bf16 only for batches large enough to pay for it. Measured on
one H200 (`benchmarks/gpu_check.py`, README): the 28×28 cgan and cvae at batch 64–512 are
bound by kernel launches, and bf16's extra cast kernels make a step 1.3–1.4× slower; at
batch 4096 (3.2M input values a step) bf16 is as fast as fp32 for cgan at half the memory,
and faster for cvae (579k vs 356k–489k images/s).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

PRECISIONS = ("auto", "bf16", "fp32")
AUTO_BF16_MIN_BATCH_VALUES = 2**21
"""`auto` uses bf16 on CUDA when a worker's batch holds at least this many input values."""


def resolve_precision(precision: str, device: torch.device, batch_values: int) -> str:
    """`bf16` or `fp32`: what `precision` (auto/bf16/fp32) means on `device` for batches of
    `batch_values` input values (batch size × values per row)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; known: {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        return "fp32"
    if precision == "auto":
        return "bf16" if batch_values >= AUTO_BF16_MIN_BATCH_VALUES else "fp32"
    return precision


def to_model_input(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, C) images + labels → float [0, 1] (N, C, H, W) and int64 labels."""
    return batch["image"].permute(0, 3, 1, 2).float().div_(255.0), batch["label"].long()


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def prepare_module(module: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """Move to `device`; channels_last with bf16 (tensor-core convolutions want it)."""
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if precision == "bf16" else module


def place_inputs(inputs: tuple[torch.Tensor, ...], precision: str) -> tuple[torch.Tensor, ...]:
    """Image batches (4-D) go channels_last with bf16, to match `prepare_module`."""
    if precision != "bf16":
        return inputs
    return tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
