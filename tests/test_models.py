"""Conformance of every generator model to the protocol, plus model-specific learning checks."""

import numpy as np
import pytest
import torch

from synth.models import MODEL_NAMES, get_model
from synth.models.base import ImageSchema, load_generator, row_noise, save_generator, with_defaults

SCHEMA = ImageSchema(height=12, width=12, channels=1, num_classes=3)


def _bars(n=60):
    labels = torch.arange(n) % 3
    images = torch.zeros(n, 1, 12, 12)
    for i, label in enumerate(labels):
        images[i, 0, :, 4 * label: 4 * label + 4] = 1.0  # a bar whose column is the class
    return images, labels


def _setup(name):
    torch.manual_seed(0)
    model = get_model(name)
    config = with_defaults(model, {"latent_dim": 4})
    networks = model.build(SCHEMA, config)
    return model, config, networks, model.optimizers(networks, config)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_step_sample_and_export(name, tmp_path):
    model, config, networks, optimizers = _setup(name)
    images, labels = _bars(6)
    losses = model.training_step(networks, images, labels, optimizers)
    assert "loss" in losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert set(optimizers) == set(model.trained)
    sampler = networks[model.sampler_name()].eval()
    out = model.sample(sampler, labels, torch.randn(6, model.noise_dim(config)))
    assert out.shape == (6, 1, 12, 12) and 0 <= out.min() and out.max() <= 1
    save_generator(str(tmp_path), name, sampler, SCHEMA, config)
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    loaded_model, loaded, schema, loaded_config = load_generator(str(tmp_path))
    assert schema == SCHEMA and loaded_config == config and loaded_model.name == name
    noise = torch.randn(3, model.noise_dim(config))
    assert torch.equal(model.sample(sampler, labels[:3], noise), model.sample(loaded, labels[:3], noise))


@pytest.mark.parametrize("name, steps", [("cvae", 200), ("cgan", 300)])
def test_models_learn_the_class_condition(name, steps):
    model, config, networks, optimizers = _setup(name)
    images, labels = _bars()
    for _ in range(steps):
        model.training_step(networks, images, labels, optimizers)
    sampler = networks[model.sampler_name()].eval()
    samples = model.sample(sampler, torch.tensor([0, 1, 2] * 4), torch.randn(12, model.noise_dim(config)))
    bands = samples[:, 0].mean(dim=1).reshape(12, 3, 4).mean(dim=2)  # brightness of each column band
    assert torch.equal(bands.argmax(dim=1), torch.tensor([0, 1, 2] * 4))


def test_row_noise_depends_on_row_id_only():
    ids = np.arange(10)
    assert np.array_equal(row_noise(1, ids, 3)[4:6], row_noise(1, ids[4:6], 3))
    assert not np.array_equal(row_noise(1, ids, 3), row_noise(2, ids, 3))
