"""One Ray Train loop for every generator model (TorchTrainer; CPU or CUDA, 1..N workers).

Data arrives through Ray Data shards (`get_dataset_shard`). Rank 0 writes a checkpoint
every epoch; re-running with the same run name and storage resumes from the latest one.
Checkpoints hold state dicts only and load with `weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import ray.data
import ray.train
import torch
from ray.train.torch import TorchTrainer

from synth.models import get_model
from synth.models.base import ImageSchema, save_generator
from synth.step import optimizer_step, prepare_module, to_model_input


@dataclass(frozen=True)
class TrainConfig:
    model: str
    model_config: dict[str, Any]
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int


def _load_checkpoint(module, optimizer) -> int:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
    target = module.module if hasattr(module, "module") else module
    target.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]) + 1


def _save_checkpoint(module, optimizer, epoch: int, metrics: dict[str, float]) -> None:
    rank = ray.train.get_context().get_world_rank()
    if rank != 0:
        ray.train.report(metrics)
        return
    target = module.module if hasattr(module, "module") else module
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"model": target.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "rng": torch.get_rng_state()}, os.path.join(folder, "state.pt"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _quiet_ray_logs() -> None:
    """Ray Train logs every report at INFO through a logger named by its file path (so its
    LoggingConfig level does not apply); datakiln prints one line per epoch instead."""
    from ray.train.v2._internal.execution import context as train_context

    for name in ("ray.data", "ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every worker; `config` holds a `TrainConfig` and the `ImageSchema` as dicts."""
    cfg, schema = TrainConfig(**config["train"]), ImageSchema(**config["schema"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _quiet_ray_logs()
    # Ray gives each worker one thread; use this node's cores, shared by its workers.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    torch.manual_seed(cfg.seed * 1000 + rank)
    device = ray.train.torch.get_device()
    model = get_model(cfg.model)
    module = ray.train.torch.prepare_model(prepare_module(model.build(schema, cfg.model_config), device))
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.learning_rate)
    start = _load_checkpoint(module, optimizer)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start, cfg.epochs):
        module.train()
        sums: dict[str, torch.Tensor] = {}
        seen, began = 0, time.perf_counter()
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, device=device,
                                              local_shuffle_buffer_size=4 * cfg.batch_size,
                                              local_shuffle_seed=cfg.seed * 1000 + epoch * world + rank):
            images, labels = to_model_input(batch)
            losses = optimizer_step(model, module, optimizer, images, labels)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value.float() * len(labels)  # no GPU sync per step
            seen += len(labels)
        metrics = {"epoch": epoch, "images_per_s": seen * world / max(time.perf_counter() - began, 1e-9),
                   **{k: float(v) / max(seen, 1) for k, v in sums.items()}}
        if rank == 0:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch")
            # sys.stdout, not print: Ray Train re-routes print() and shows each line twice.
            sys.stdout.write(f"[train] epoch {epoch + 1}/{cfg.epochs} {shown}\n")
            sys.stdout.flush()
        _save_checkpoint(module, optimizer, epoch, metrics)


@dataclass
class TrainResult:
    model_dir: str
    """Folder with `model.safetensors` + `model.json` (the final generator)."""
    checkpoint_path: str
    history: list[dict[str, float]]
    seconds: float


def fit(train: ray.data.Dataset, schema: ImageSchema, cfg: TrainConfig, *, workers: int, use_gpu: bool,
        storage_path: str, run_name: str, max_failures: int, model_dir: str) -> TrainResult:
    """Train (or resume) the generator and export its final weights to `model_dir`."""
    began = time.perf_counter()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"train": asdict(cfg), "schema": asdict(schema)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": train.select_columns(["image", "label"])},
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
    module = get_model(cfg.model).build(schema, cfg.model_config)
    module.load_state_dict(state["model"])
    save_generator(model_dir, cfg.model, module, schema, cfg.model_config)
    history = [dict(m) for m in (result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else [result.metrics])]
    with open(os.path.join(model_dir, "history.json"), "w") as handle:
        json.dump(history, handle, indent=1, default=float)
    return TrainResult(model_dir=model_dir, checkpoint_path=result.checkpoint.path, history=history,
                       seconds=time.perf_counter() - began)
