"""Device handling shared by the Ray Train loop and the benchmarks (no Ray here).

Precision is `bf16` (autocast; on CUDA also channels_last modules and inputs) or `fp32`.

- CUDA: `auto` picks bf16 only for batches large enough to pay for it. Measured on one H200
  (`benchmarks/gpu_check.py`, README): the 28×28 cgan and cvae at batch 64–512 are bound by
  kernel launches, and bf16's extra cast kernels make a step 1.3–1.4× slower; at batch 4096
  (3.2M input values a step) bf16 is as fast as fp32 for cgan at half the memory, and faster
  for cvae (579k vs 356k–489k images/s).
- CPU: `auto` is fp32; `bf16` is taken where the CPU has native bf16 arithmetic (oneDNN's
  check: AVX-512 BF16 or AMX), else fp32 (emulated bf16 is slower than fp32), and only for
  sampling: on a 2-core AVX-512 BF16 VM, interleaved over 3 rounds, the 32×32 `cflow` U-Net
  samples 2.09× faster in bf16 (range 1.85–2.30, one thread) but its training step runs at
  0.87× (0.86–0.93; the casts around every GroupNorm cost more than the faster
  convolutions save), so `synth.train` trains in fp32 on CPU. channels_last made CPU
  convolutions slower, so CPU keeps the default layout.
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
    if device.type == "cpu":
        return "bf16" if precision == "bf16" and cpu_has_bf16() else "fp32"
    if device.type != "cuda":
        return "fp32"
    if precision == "auto":
        return "bf16" if batch_values >= AUTO_BF16_MIN_BATCH_VALUES else "fp32"
    return precision


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (oneDNN's own check)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def to_model_input(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, C) images + labels → float [0, 1] (N, C, H, W) and int64 labels."""
    return batch["image"].permute(0, 3, 1, 2).float().div_(255.0), batch["label"].long()


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def prepare_module(module: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """Move to `device`; channels_last with bf16 on CUDA (tensor-core convolutions want it)."""
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if _channels_last(device, precision) else module


def _channels_last(device: torch.device, precision: str) -> bool:
    return precision == "bf16" and device.type == "cuda"


def place_inputs(inputs: tuple[torch.Tensor, ...], device: torch.device, precision: str) -> tuple[torch.Tensor, ...]:
    """Image batches (4-D) go channels_last with bf16 on CUDA, to match `prepare_module`."""
    if not _channels_last(device, precision):
        return inputs
    return tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
