"""The generator-model protocol and checkpoint files that load without unpickling code."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

import numpy as np


@dataclass(frozen=True)
class ImageSchema:
    """What a generator produces: (channels, height, width) images of `num_classes` classes."""

    height: int
    width: int
    channels: int
    num_classes: int

    @property
    def values_per_row(self) -> int:
        return self.height * self.width * self.channels


class GeneratorModel(Protocol):
    """One generator family; the training loop, sampler and evaluation need nothing else.

    A model is a set of named networks. Those in `trained` get an optimizer and, with
    several workers, their own DDP wrapper (each is called through its own forward, so
    gradients sync); the others (e.g. an EMA copy) follow by `training_step`'s own rules.
    Images are float tensors in [0, 1], shape (N, C, H, W).
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    """`image` or `table`: which pipeline and sampler the model serves."""
    schema_type: ClassVar[type]
    """`ImageSchema` or `TableSchema`: what `build` is given (stored in `model.json`)."""
    trained: ClassVar[tuple[str, ...]]
    defaults: ClassVar[dict[str, Any]]
    """Config defaults (`latent_dim`, `learning_rate`, …) that the spec may override."""
    min_steps: ClassVar[int]
    """When the spec leaves `epochs` unset, the default epochs are raised so training takes at
    least this many steps (a GAN needs updates, not passes: small tables get more epochs)."""
    max_steps: ClassVar[int | None]
    """Optional: unset `epochs` are also lowered (to one at least) so training takes at most
    this many steps (a language model on a large corpus learns from tokens, not passes)."""

    def build(self, schema: ImageSchema, config: dict[str, Any]) -> dict[str, Any]: ...

    def optimizers(self, networks: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]: ...

    def inputs(self, batch: dict[str, Any]) -> tuple[Any, ...]:
        """A batch of training rows (torch tensors by column) → `training_step`'s inputs."""

    def training_step(self, networks: dict[str, Any], *inputs_and_optimizers) -> dict[str, Any]:
        """`training_step(networks, *inputs, optimizers)`: one update of every trained
        network; returns detached losses."""

    def sampler(self, schema: ImageSchema, config: dict[str, Any]):
        """A fresh instance of the network that `sample` uses (what gets exported)."""

    def sampler_name(self) -> str:
        """Which of the networks is exported for sampling."""

    def sample(self, sampler, labels, noise):
        """Images for `labels` from `noise` (rows of `noise_dim` standard normals)."""

    def noise_dim(self, config: dict[str, Any], schema: Any) -> int:
        """Standard normals per row that `sample` turns into one image or row."""


class ImageModel:
    """What the image generators share: (N, C, H, W) floats in [0, 1] and class labels in."""

    modality = "image"
    schema_type = ImageSchema
    min_steps = 0
    side_multiple = 4
    """Two stride-2 layers each way: image sides must be multiples of this."""

    def inputs(self, batch: dict[str, Any]) -> tuple[Any, ...]:
        from synth.step import to_model_input

        return to_model_input(batch)


def with_defaults(model: GeneratorModel, config: dict[str, Any]) -> dict[str, Any]:
    return {**model.defaults, **{k: v for k, v in config.items() if v is not None}}


def steps_per_epoch(rows: int, batch_size: int, workers: int) -> int:
    """A worker's optimizer steps in one epoch over `rows` rows shared by `workers` workers."""
    return max(1, -(-rows // (batch_size * workers)))


def default_epochs(model: GeneratorModel, rows: int, batch_size: int, workers: int) -> int:
    """The model's default epochs, raised to reach `model.min_steps` steps on `rows` rows and
    lowered to stay within `model.max_steps`, where the model has one."""
    per_epoch = steps_per_epoch(rows, batch_size, workers)
    epochs = max(model.defaults["epochs"], -(-model.min_steps // per_epoch))
    most = getattr(model, "max_steps", None)
    return min(epochs, max(1, most // per_epoch)) if most else epochs


def unwrap(network):
    """The module inside a DDP wrapper (or the module itself)."""
    return network.module if hasattr(network, "module") else network


def adam(parameters, **settings):
    """Adam with PyTorch's fused kernel: one update for all tensors. On CPU it steps these
    small networks ~7× faster than the per-tensor loop PyTorch picks by default."""
    import torch

    return torch.optim.Adam(parameters, fused=True, **settings)


def ema_update(ema, network, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·network, in one fused update per tensor list (a loop
    would launch a kernel per tensor on CUDA); buffers (batch-norm statistics) are copied."""
    import torch

    source = unwrap(network)
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(source.parameters()), 1 - decay)
        torch._foreach_copy_(list(ema.buffers()), list(source.buffers()))


def row_noise(seed: int, row_ids: np.ndarray, dim: int) -> np.ndarray:
    """Standard-normal noise per row id: the same id gives the same noise on any worker,
    whatever the batch boundaries, so sampling is reproducible under any parallelism."""
    return np.stack([np.random.default_rng([seed, int(i)]).standard_normal(dim) for i in row_ids]).astype(np.float32)


def class_grid(model: GeneratorModel, sampler, num_classes: int, config: dict[str, Any],
               per_class: int = 8) -> np.ndarray:
    """uint8 (H·classes, W·per_class, C) grid, one row per class, from fixed noise (seed 0),
    so grids of successive epochs compare."""
    import torch

    device = next(sampler.parameters()).device
    labels = torch.arange(num_classes, device=device).repeat_interleave(per_class)
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (len(labels), model.noise_dim(config, sampler.schema))).astype(np.float32)).to(device)
    was_training = sampler.training
    sampler.eval()
    with torch.no_grad():
        images = model.sample(sampler, labels, noise).float().clamp(0, 1)
    sampler.train(was_training)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    h, w, c = pixels.shape[1:]
    return pixels.reshape(num_classes, per_class, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        num_classes * h, per_class * w, c)


def save_png(pixels: np.ndarray, uri: str) -> None:
    """(H, W, 1|3) uint8 → a PNG file at any fsspec URI."""
    import fsspec
    from PIL import Image

    with fsspec.open(uri, "wb", auto_mkdir=True) as handle:
        Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(handle, format="PNG")


def save_generator(directory: str, model_name: str, sampler, schema: Any, config: dict[str, Any]) -> str:
    """Write `model.safetensors` (the sampling network) + `model.json`; return the weights path."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    weights = os.path.join(directory, "model.safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(sampler).state_dict().items()}
    save_file(state, weights)
    with open(os.path.join(directory, "model.json"), "w") as handle:
        json.dump({"model": model_name, "schema": asdict(schema), "config": config}, handle, indent=2)
    return weights


def load_generator(directory: str):
    """Return `(model, sampler, schema, config)` from a `save_generator` folder."""
    from safetensors.torch import load_file

    from synth.models import get_model

    with open(os.path.join(directory, "model.json")) as handle:
        meta = json.load(handle)
    model = get_model(meta["model"])
    schema = model.schema_type(**meta["schema"])
    sampler = model.sampler(schema, meta["config"])
    sampler.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    return model, sampler.eval(), schema, meta["config"]
