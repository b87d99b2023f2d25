"""Conformance of every generator model to the protocol, plus model-specific learning checks."""

import copy

import numpy as np
import pytest
import torch

import pyarrow as pa

from synth.models import MODEL_NAMES, TABLE_MODELS, get_model
from synth.models.base import ImageSchema, load_generator, row_noise, save_generator, with_defaults
from synth.models.table import TableSchema
from synth.tabular import TableEncoder, infer_kinds

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


IMAGE_MODELS = tuple(name for name in MODEL_NAMES if name not in TABLE_MODELS)


@pytest.mark.parametrize("name", IMAGE_MODELS)
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


def _table_setup(name):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    kind = np.array(["low", "high"] * 100)
    table = pa.table({"kind": kind, "x": np.where(kind == "low", -5.0, 5.0) + rng.normal(0, 0.3, 200)})
    encoder = TableEncoder.fit(table, infer_kinds(table), seed=0)
    schema = TableSchema(encoder.to_json())
    model = get_model(name)
    config = with_defaults(model, {"latent_dim": 8, "batch_size": 100})
    networks = model.build(schema, config)
    return model, config, networks, model.optimizers(networks, config), encoder, schema, table


@pytest.mark.parametrize("name", TABLE_MODELS)
def test_table_models_honour_the_condition_and_export(name, tmp_path):
    model, config, networks, optimizers, encoder, schema, table = _table_setup(name)
    features = torch.tensor(encoder.encode(table))
    for step in range(800):  # sampling draws each row's mode: it must be learnt, not just ranked first
        losses = model.training_step(networks, features[torch.randperm(200)[:100]], optimizers)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sampler = networks[model.sampler_name()].eval()
    cond = torch.tensor(np.stack([encoder.condition_vector("kind", v) for v in ["low"] * 50 + ["high"] * 50]))
    noise = torch.randn(100, model.noise_dim(config, schema))
    rows = encoder.decode(model.sample(sampler, cond, noise).numpy())
    x = rows["x"].to_numpy()
    assert x[:50].mean() < -2 and x[50:].mean() > 2  # the numeric column follows the asked category
    save_generator(str(tmp_path), name, sampler, schema, config)
    _, loaded, loaded_schema, _ = load_generator(str(tmp_path))
    assert loaded_schema == schema
    assert torch.equal(model.sample(sampler, cond[:4], noise[:4]), model.sample(loaded, cond[:4], noise[:4]))


def test_precision_resolves_per_device_and_batch():
    from synth.step import AUTO_BF16_MIN_BATCH_VALUES, place_inputs, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert {resolve_precision(p, cpu, 10**9) for p in ("auto", "bf16", "fp32")} == {"fp32"}
    assert resolve_precision("auto", cuda, 512 * 28 * 28) == "fp32"  # launch-bound: fp32 is faster
    assert resolve_precision("auto", cuda, AUTO_BF16_MIN_BATCH_VALUES) == "bf16"
    assert resolve_precision("bf16", cuda, 1) == "bf16" and resolve_precision("fp32", cuda, 10**9) == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", cuda, 1)
    images, labels = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    placed, same = place_inputs((images, labels), "bf16")
    assert placed.is_contiguous(memory_format=torch.channels_last) and same is labels
    assert place_inputs((images, labels), "fp32")[0] is images


def test_ema_tracks_the_trained_generator():
    """cgan's and ctgan's EMA: one update moves every EMA weight by exactly (1 − decay) of its gap to the generator."""
    from synth.models.base import ema_update

    generator = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = copy.deepcopy(generator).requires_grad_(False)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(1.0)
    generator.train()(torch.randn(8, 3))  # moves the batch-norm statistics
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, generator, 0.9)
    for old, new, target in zip(before, ema.parameters(), generator.parameters()):
        assert torch.allclose(new, old + 0.1 * (target - old))
    for mine, theirs in zip(ema.buffers(), generator.buffers()):
        assert torch.equal(mine, theirs)


def test_gan_default_epochs_reach_its_minimum_steps():
    from synth.models.base import default_epochs

    ctgan, tvae = get_model("ctgan"), get_model("tvae")
    assert default_epochs(ctgan, 8_930, 500, 1) == 556  # 18 steps an epoch → 10,000 steps
    assert default_epochs(ctgan, 8_930, 500, 2) == 1_112  # two workers: 9 steps an epoch each
    assert default_epochs(ctgan, 2_000_000, 500, 1) == 300  # large tables keep the model's 300
    assert default_epochs(tvae, 8_930, 500, 1) == 300
