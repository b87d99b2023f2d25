"""The generator-model protocol and checkpoint files that load without unpickling code."""

from __future__ import annotations

import json
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


class GeneratorModel(Protocol):
    """One generator family. The training loop, sampler and evaluation need nothing else.

    `build` returns a module whose `forward` is what `training_step` calls (so that a DDP
    wrapper syncs gradients); images are float tensors in [0, 1], shape (N, C, H, W).
    """

    name: ClassVar[str]

    def build(self, schema: ImageSchema, config: dict[str, Any]): ...

    def training_step(self, module, images, labels) -> dict[str, Any]:
        """Losses for one batch; the key `loss` is minimised."""

    def sample(self, module, labels, noise):
        """Images for `labels` from `noise` (rows of `noise_dim` standard normals)."""

    def noise_dim(self, config: dict[str, Any]) -> int: ...


def row_noise(seed: int, row_ids: np.ndarray, dim: int) -> np.ndarray:
    """Standard-normal noise per row id: the same id gives the same noise on any worker,
    whatever the batch boundaries, so sampling is reproducible under any parallelism."""
    return np.stack([np.random.default_rng([seed, int(i)]).standard_normal(dim) for i in row_ids]).astype(np.float32)


def save_generator(directory: str, model_name: str, module, schema: ImageSchema, config: dict[str, Any]) -> str:
    """Write `model.safetensors` + `model.json`; return the weights path."""
    import os

    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    weights = os.path.join(directory, "model.safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, weights)
    with open(os.path.join(directory, "model.json"), "w") as handle:
        json.dump({"model": model_name, "schema": asdict(schema), "config": config}, handle, indent=2)
    return weights


def load_generator(directory: str):
    """Return `(model, module, schema, config)` from a `save_generator` folder."""
    import os

    from safetensors.torch import load_file

    from synth.models import get_model

    with open(os.path.join(directory, "model.json")) as handle:
        meta = json.load(handle)
    model = get_model(meta["model"])
    schema = ImageSchema(**meta["schema"])
    module = model.build(schema, meta["config"])
    module.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    module.eval()
    return model, module, schema, meta["config"]
