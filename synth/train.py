"""One Ray Train loop for every generator model (TorchTrainer; CPU or CUDA, 1..N workers).

Data arrives through Ray Data shards (`get_dataset_shard`); each trained network gets its
own DDP wrapper when there are several workers (gloo on CPU, NCCL on CUDA). Rank 0 writes
a checkpoint every epoch (all networks, all optimizers, RNG state); re-running with the
same run name and storage resumes from the latest one. Checkpoints hold state dicts only
and load with `weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import ray.data
import ray.train
import torch
from ray.train.torch import TorchTrainer

from synth.models import get_model
from synth.models.base import class_grid, save_generator, save_png, unwrap
from synth.progress import watch
from synth.step import autocast_for, cpu_has_bf16, place_inputs, prepare_module, resolve_precision

STATE_FILE = "state.pt"
PROGRESS_SECONDS = 0.5
"""Rank 0 tells the driver's progress board where it is at most this often."""
GRID_SHARE = 0.05
"""Image models draw a sample grid after an epoch once the training since the last grid took
at least 1 / GRID_SHARE times as long as drawing it (every epoch for a cvae; every few for a
U-Net that samples in dozens of network calls: a grid every epoch took 15 % of `cflow`'s
training on CIFAR-10), and always after the last epoch."""
SHARD_CACHE_BYTES = 2 * 2**30
"""A worker reads its shard into memory once when it is at most this big, so epochs skip
re-running the Ray Data pipeline (the main per-epoch overhead) and a resumed run replays
exactly the batches an uninterrupted one would have seen."""


class _Shard:
    """Batches of this worker's shard.

    A shard that fits in `SHARD_CACHE_BYTES` is read once, in order, and every epoch is the
    permutation seeded by (seed, epoch): the batches of epoch e are the same whether the run
    got there directly or resumed from a checkpoint (after a lost node, say). A bigger shard
    is streamed from Ray Data every epoch with a seeded local shuffle (reproducible from the
    start, but a resumed epoch sees other batches).
    """

    def __init__(self, iterator, batch_size: int, device: torch.device, seed: int):
        self.iterator, self.batch_size, self.device, self.seed = iterator, batch_size, device, seed
        self.cached: dict[str, torch.Tensor] | None = None
        self.streamed = False

    def _read_all(self) -> None:
        parts, size = [], 0
        for batch in self.iterator.iter_torch_batches(batch_size=self.batch_size, device="cpu"):
            size += sum(v.numel() * v.element_size() for v in batch.values())
            if size > SHARD_CACHE_BYTES:
                self.streamed = True
                return
            parts.append(batch)
        if parts:
            self.cached = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def epoch(self, epoch: int):
        if self.cached is None and not self.streamed:
            self._read_all()
        if self.cached is not None:
            rows = len(next(iter(self.cached.values())))
            order = torch.randperm(rows, generator=torch.Generator().manual_seed(self.seed + epoch))
            for start in range(0, len(order), self.batch_size):
                index = order[start:start + self.batch_size]
                yield {k: v[index].to(self.device, non_blocking=True) for k, v in self.cached.items()}
            return
        for batch in self.iterator.iter_torch_batches(batch_size=self.batch_size, device="cpu",
                                                      local_shuffle_buffer_size=4 * self.batch_size,
                                                      local_shuffle_seed=self.seed + epoch):
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


@dataclass(frozen=True)
class TrainConfig:
    model: str
    model_config: dict[str, Any]
    """The model's defaults merged with the spec's overrides (see `with_defaults`)."""
    epochs: int
    batch_size: int
    seed: int
    attempts_uri: str
    """Folder (shared storage, beside the checkpoints) where each training attempt is recorded."""
    checkpoint_every: int = 1
    precision: str = "auto"
    """On GPU: `bf16`, `fp32`, or `auto` (see `synth.step.resolve_precision`); CPU trains in fp32
    (bf16 is for CPU sampling only)."""
    lr_schedule: str = "constant"
    """`constant`, or `linear`: every optimizer's learning rate falls linearly from its initial
    value to 0 over `total_steps` (a worker's steps in the whole run)."""
    total_steps: int | None = None
    """A worker's optimizer steps over all epochs (`epochs × synth.models.base.steps_per_epoch`);
    needed by the `linear` schedule."""

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule: '{self.lr_schedule}' is not one of constant, linear")
        if self.lr_schedule == "linear" and not self.total_steps:
            raise ValueError("lr_schedule linear needs total_steps")


def scale_learning_rates(optimizers: dict[str, torch.optim.Optimizer], factor: float) -> None:
    """Set every parameter group's learning rate to `factor` times its initial one (kept in the
    group as `initial_lr`, so it travels with the optimizer's checkpointed state)."""
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def schedule_factor(cfg: TrainConfig, step: int) -> float:
    """The learning-rate multiplier for the step after `step` steps (a function of the global
    step count alone, so a resumed run follows the same schedule)."""
    if cfg.lr_schedule == "constant":
        return 1.0
    return max(0.0, 1.0 - step / cfg.total_steps)


def _state(networks: dict[str, Any], optimizers: dict[str, Any], epoch: int, step: int) -> dict[str, Any]:
    return {"networks": {name: unwrap(net).state_dict() for name, net in networks.items()},
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "epoch": epoch, "step": step, "rng": torch.get_rng_state()}


def _load_checkpoint(networks: dict[str, Any], optimizers: dict[str, Any]) -> tuple[int, int]:
    """Restore the latest checkpoint, if any; return (first epoch still to run, steps done)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, 0
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    for name, net in networks.items():
        unwrap(net).load_state_dict(state["networks"][name])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]) + 1, int(state["step"])


def _record_attempt(uri: str, start_epoch: int, world: int) -> None:
    """Rank 0 notes each (re)start, so lineage can tell a resume or a worker failure."""
    import fsspec

    stamp = time.time()
    with fsspec.open(f"{uri.rstrip('/')}/attempt-{stamp:.6f}.json", "w", auto_mkdir=True) as handle:
        json.dump({"start_epoch": start_epoch, "workers": world, "time": stamp}, handle)


def _history_uri(cfg: TrainConfig) -> str:
    return f"{cfg.attempts_uri.rsplit('/', 1)[0]}/datakiln-history"


def read_attempts(uri: str) -> list[dict[str, Any]]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        return []
    records = []
    for name in sorted(fs.glob(f"{path.rstrip('/')}/attempt-*.json")):
        with fs.open(name, "r") as handle:
            records.append(json.load(handle))
    return sorted(records, key=lambda r: r["time"])


def _record_epoch(uri: str, metrics: dict[str, float]) -> None:
    """Rank 0 keeps each epoch's metrics beside the checkpoints (Ray Train only sees the
    epochs that end with a report), so the loss history survives resumes."""
    import fsspec

    with fsspec.open(f"{uri.rstrip('/')}/epoch-{int(metrics['epoch']):06d}.json", "w", auto_mkdir=True) as handle:
        json.dump(metrics, handle)


def read_history(uri: str) -> list[dict[str, float]]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        return []
    records = []
    for name in sorted(fs.glob(f"{path.rstrip('/')}/epoch-*.json")):
        with fs.open(name, "r") as handle:
            records.append(json.load(handle))
    return records


def _report(networks: dict[str, Any], optimizers: dict[str, Any], epoch: int, step: int,
            metrics: dict[str, float]) -> None:
    """Every rank reports at each checkpoint epoch (a barrier); rank 0 attaches the checkpoint.
    Reporting only then keeps a per-epoch barrier off short epochs (small tables)."""
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(_state(networks, optimizers, epoch, step), os.path.join(folder, STATE_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _quiet_ray_logs() -> None:
    """Ray Train logs every report at INFO through a logger named by its file path (so its
    LoggingConfig level does not apply); datakiln shows its own progress instead."""
    from ray.train.v2._internal.execution import context as train_context

    for name in ("ray.data", "ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)


def _show(board, epochs_done: int, rows_into_epoch: int, step: int, losses: dict[str, float]) -> None:
    """Tell the driver's progress board where training is (global rows, over all workers)."""
    board.set.remote(epochs_done=epochs_done, rows_into_epoch=rows_into_epoch, step=step, losses=losses)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every worker; `config` holds a `TrainConfig` and the model's schema as dicts,
    and `board`, a `synth.progress.ProgressBoard` handle (or None) that rank 0 reports to."""
    cfg = TrainConfig(**config["train"])
    model = get_model(cfg.model)
    schema = model.schema_type(**config["schema"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _quiet_ray_logs()
    # Ray gives each worker one thread; use this node's cores, shared by its workers.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    torch.manual_seed(cfg.seed * 1000 + rank)
    device = ray.train.torch.get_device()
    precision = (resolve_precision(cfg.precision, device, cfg.batch_size * schema.values_per_row)
                 if device.type == "cuda" else "fp32")  # CPU training stays fp32 (see synth.step)
    networks = {name: prepare_module(net, device, precision) for name, net in model.build(schema, cfg.model_config).items()}
    for name in model.trained:
        networks[name] = ray.train.torch.prepare_model(networks[name])
    optimizers = model.optimizers(networks, cfg.model_config)
    start, step = _load_checkpoint(networks, optimizers)
    board = config.get("board") if rank == 0 else None  # rank 0 speaks for the group
    if rank == 0:
        _record_attempt(cfg.attempts_uri, start, world)
    if board is not None:
        if device.type == "cuda":
            board.say.remote(f"{precision} on {torch.cuda.get_device_name(device)}")
        elif cfg.precision == "bf16":
            board.say.remote("fp32 training on CPU (bf16 trains no faster there); sampling in bf16" if cpu_has_bf16() else
                             "fp32: this CPU has no native bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 is slower")
        if start >= cfg.epochs:
            board.say.remote(f"already trained: all {cfg.epochs} epochs are in the last checkpoint (step {step})")
        elif start:
            board.say.remote(f"resuming at epoch {start + 1}/{cfg.epochs} (step {step})")
    shard = _Shard(ray.train.get_dataset_shard("train"), cfg.batch_size, device, cfg.seed * 1000 + rank)
    grid_seconds, trained_since_grid = 0.0, 0.0
    for epoch in range(start, cfg.epochs):
        for net in networks.values():
            net.train()
        sums: dict[str, torch.Tensor] = {}
        seen, began = 0, time.perf_counter()
        shown_at = began
        for batch in shard.epoch(epoch):
            if cfg.lr_schedule != "constant":
                scale_learning_rates(optimizers, schedule_factor(cfg, step))
            inputs = place_inputs(model.inputs(batch), device, precision)
            with autocast_for(device, precision):
                losses = model.training_step(networks, *inputs, optimizers)
            rows = len(inputs[0])
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value.float() * rows  # no GPU sync per step
            seen += rows
            step += 1
            if board is not None and time.perf_counter() - shown_at >= PROGRESS_SECONDS:
                shown_at = time.perf_counter()
                _show(board, epoch, seen * world, step, {k: float(v) / seen for k, v in sums.items()})
        metrics = {"epoch": epoch, "step": step, "rows_per_s": seen * world / max(time.perf_counter() - began, 1e-9),
                   **{k: float(v) / max(seen, 1) for k, v in sums.items()}}
        if board is not None:
            _show(board, epoch + 1, 0, step, {k: v for k, v in metrics.items() if k not in ("epoch", "step", "rows_per_s")})
        if rank == 0:
            trained_since_grid += time.perf_counter() - began
            if model.modality == "image" and grid_due(epoch + 1 == cfg.epochs, trained_since_grid, grid_seconds):
                drawn_at = time.perf_counter()
                with autocast_for(device, precision):
                    grid = class_grid(model, unwrap(networks[model.sampler_name()]), schema.num_classes,
                                      cfg.model_config)
                save_png(grid, f"{cfg.attempts_uri.rsplit('/', 1)[0]}/samples/epoch-{epoch + 1:03d}.png")
                grid_seconds, trained_since_grid = time.perf_counter() - drawn_at, 0.0
            _record_epoch(_history_uri(cfg), metrics)
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            _report(networks, optimizers, epoch, step, metrics)


def grid_due(last_epoch: bool, trained_since_grid: float, grid_seconds: float) -> bool:
    """Whether to draw a sample grid now: after the last epoch, or once the training since the
    last grid took at least 1 / GRID_SHARE times as long as that grid did to draw."""
    return last_epoch or trained_since_grid * GRID_SHARE >= grid_seconds


@dataclass
class TrainResult:
    model_dir: str
    """Folder with `model.safetensors` + `model.json` (the network used for sampling)."""
    checkpoint_path: str
    history: list[dict[str, float]]
    attempts: list[dict[str, Any]]
    """Every (re)start of the training loop for this run: first one, resumes, restarts."""
    steps: int
    seconds: float


def fit(train: ray.data.Dataset, schema: Any, cfg: TrainConfig, *, workers: int, use_gpu: bool,
        storage_path: str, run_name: str, max_failures: int, model_dir: str, keep_checkpoints: int = 2,
        on_progress: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or resume) the generator and export its sampling network to `model_dir`.
    `on_progress(state)` runs on a driver thread with rank 0's latest `epochs_done`,
    `rows_into_epoch` (all workers), `step` and `losses`, and the lines it said."""
    began = time.perf_counter()
    model = get_model(cfg.model)
    # Materialised with only the trained columns, a worker's reads start no Ray Data task
    # (`train` usually comes materialised with just those columns: then nothing is copied).
    trained_columns = ["image", "label"] if model.modality == "image" else ["features"]
    columns = (train if train.columns() == trained_columns else train.select_columns(trained_columns)).materialize()
    with watch(on_progress) if on_progress else nullcontext() as board:
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"train": asdict(cfg), "schema": asdict(schema), "board": board},
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=ray.train.RunConfig(
                name=run_name, storage_path=storage_path,
                failure_config=ray.train.FailureConfig(max_failures=max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            ),
            datasets={"train": columns},
            dataset_config=ray.train.DataConfig(datasets_to_split=[] if workers == 1 else "all"),
        )
        result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    sampler = model.sampler(schema, cfg.model_config)
    sampler.load_state_dict(state["networks"][model.sampler_name()])
    save_generator(model_dir, cfg.model, sampler, schema, cfg.model_config)
    history = read_history(_history_uri(cfg))
    with open(os.path.join(model_dir, "history.json"), "w") as handle:
        json.dump(history, handle, indent=1, default=float)
    return TrainResult(model_dir=model_dir, checkpoint_path=result.checkpoint.path, history=history,
                       attempts=read_attempts(cfg.attempts_uri), steps=int(state["step"]),
                       seconds=time.perf_counter() - began)
