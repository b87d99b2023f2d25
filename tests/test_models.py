"""Conformance of every generator model to the protocol, plus model-specific learning checks."""

import copy
import math

import numpy as np
import pytest
import torch

import pyarrow as pa

from synth.models import MODEL_KINDS, TABLE_MODELS, get_model
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
    config = with_defaults(model, {"latent_dim": 4, "width": 16})
    networks = model.build(SCHEMA, config)
    return model, config, networks, model.optimizers(networks, config)


IMAGE_MODELS = tuple(name for name, kind in MODEL_KINDS.items() if kind == "image")


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_step_sample_and_export(name, tmp_path):
    model, config, networks, optimizers = _setup(name)
    images, labels = _bars(6)
    losses = model.training_step(networks, images, labels, optimizers)
    assert "loss" in losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert set(optimizers) == set(model.trained)
    sampler = networks[model.sampler_name()].eval()
    out = model.sample(sampler, labels, torch.randn(6, model.noise_dim(config, SCHEMA)))
    assert out.shape == (6, 1, 12, 12) and 0 <= out.min() and out.max() <= 1
    save_generator(str(tmp_path), name, sampler, SCHEMA, config)
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    loaded_model, loaded, schema, loaded_config = load_generator(str(tmp_path))
    assert schema == SCHEMA and loaded_config == config and loaded_model.name == name
    noise = torch.randn(3, model.noise_dim(config, SCHEMA))
    assert torch.equal(model.sample(sampler, labels[:3], noise), model.sample(loaded, labels[:3], noise))


@pytest.mark.parametrize("name, steps", [("cvae", 200), ("cgan", 300), ("cflow", 150)])
def test_models_learn_the_class_condition(name, steps):
    model, config, networks, optimizers = _setup(name) if name != "cflow" else _small(name, SCHEMA, learning_rate=2e-3)
    images, labels = _bars()
    for _ in range(steps):
        model.training_step(networks, images, labels, optimizers)
    sampler = networks[model.sampler_name()].eval()
    samples = model.sample(sampler, torch.tensor([0, 1, 2] * 4), torch.randn(12, model.noise_dim(config, SCHEMA)))
    bands = samples[:, 0].mean(dim=1).reshape(12, 3, 4).mean(dim=2)  # brightness of each column band
    assert torch.equal(bands.argmax(dim=1), torch.tensor([0, 1, 2] * 4))


SHAPES = {"grey28": (28, 28, 1), "rgb32": (32, 32, 3), "rgb64": (64, 64, 3)}


def _small(name, schema, **settings):
    """A narrow network of `name` for `schema` (a few steps of it stay cheap at 64×64)."""
    model = get_model(name)
    config = with_defaults(model, {"width": 8, **({"sample_steps": 4} if "sample_steps" in model.defaults else {}),
                                   **settings})
    torch.manual_seed(0)
    networks = model.build(schema, config)
    return model, config, networks, model.optimizers(networks, config)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_conform_at_every_resolution(name, shape, tmp_path):
    """Shapes, determinism under a seed and the checkpoint round trip, grey and RGB, 28–64 px."""
    height, width, channels = SHAPES[shape]
    schema = ImageSchema(height=height, width=width, channels=channels, num_classes=3)
    model, config, networks, optimizers = _small(name, schema)
    _, _, twin, _ = _small(name, schema)
    for mine, theirs in zip(networks.values(), twin.values()):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    torch.manual_seed(1)
    images, labels = torch.rand(4, channels, height, width), torch.tensor([0, 1, 2, 0])
    losses = model.training_step(networks, images, labels, optimizers)
    assert all(torch.isfinite(v) for v in losses.values())
    sampler = networks[model.sampler_name()].eval()
    noise = torch.from_numpy(row_noise(7, np.arange(4), model.noise_dim(config, schema)))
    out = model.sample(sampler, labels, noise)
    assert out.shape == (4, channels, height, width) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, model.sample(sampler, labels, noise))
    save_generator(str(tmp_path), name, sampler, schema, config)
    _, loaded, loaded_schema, _ = load_generator(str(tmp_path))
    assert loaded_schema == schema and torch.equal(out, model.sample(loaded, labels, noise))


@pytest.mark.parametrize("name, steps, rate", [("cvae", 150, None), ("cgan", 250, None), ("cflow", 100, 2e-3)])
def test_rgb_samples_follow_their_class(name, steps, rate):
    """32×32 RGB, the class is the colour: after a short training each conditional sample is
    brightest in its own class's channel."""
    schema = ImageSchema(height=32, width=32, channels=3, num_classes=3)
    model, config, networks, optimizers = _small(name, schema, **({"learning_rate": rate} if rate else {}))
    labels = torch.arange(24) % 3
    images = 0.1 + 0.1 * torch.rand(24, 3, 32, 32)
    images[torch.arange(24), labels] += 0.7
    for _ in range(steps):
        model.training_step(networks, images, labels, optimizers)
    sampler = networks[model.sampler_name()].eval()
    wanted = torch.tensor([0, 1, 2] * 4)
    samples = model.sample(sampler, wanted, torch.randn(12, model.noise_dim(config, schema)))
    assert torch.equal(samples.mean(dim=(2, 3)).argmax(dim=1), wanted)


def _randomised_flow(schema, **settings):
    """A small cflow whose zero-initialised layers are drawn at random, so its velocity field is
    neither zero nor linear (as after training)."""
    model, config, networks, _ = _small("cflow", schema, **settings)
    sampler = networks["ema"].eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in sampler.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
    return model, config, sampler


class _RotatingField(torch.nn.Module):
    """dx/dt = 2·cos(3t)·x, solved exactly by x(1) = x(0)·exp(2·sin(3)/3): a smooth field
    that stands in for a trained network, so each solver's order of accuracy shows."""

    def __init__(self, schema, solver, steps):
        super().__init__()
        self.schema, self.solver, self.steps, self.guidance = schema, solver, steps, 1.0

    def forward(self, x, t, labels):
        return 2 * torch.cos(3 * t)[:, None, None, None] * x


def test_flow_solvers_reach_their_order_of_accuracy():
    """Euler's error halves when the steps double; Heun's and ab2's fall about fourfold, and ab2
    at N network calls beats Euler at N by far."""
    schema = ImageSchema(height=4, width=4, channels=1, num_classes=1)
    model = get_model("cflow")
    noise = 0.8 * torch.rand(2, 16, generator=torch.Generator().manual_seed(0)) - 0.4
    exact = ((noise * math.exp(2 * math.sin(3) / 3)).reshape(2, 1, 4, 4) + 1) / 2

    def error(solver, steps):
        return float((model.sample(_RotatingField(schema, solver, steps), torch.zeros(2), noise) - exact).abs().max())

    assert 0.4 < error("euler", 32) / error("euler", 16) < 0.6
    for solver in ("heun", "ab2"):
        assert error(solver, 32) / error(solver, 16) < 0.35, solver
    assert error("ab2", 16) < error("euler", 16) / 5


def test_flow_guidance_applies_only_inside_its_interval():
    schema = ImageSchema(height=8, width=8, channels=1, num_classes=3)
    model, config, sampler = _randomised_flow(schema, sample_steps=6)
    labels, noise = torch.tensor([0, 1, 2]), torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    samples = {}
    for guidance, interval in ((1.0, (0.0, 1.0)), (3.0, (0.0, 0.0)), (3.0, (0.1, 0.7)), (3.0, (0.0, 1.0))):
        sampler.guidance, (sampler.guided_from, sampler.guided_until) = guidance, interval
        samples[guidance, interval] = model.sample(sampler, labels, noise)
    assert torch.equal(samples[1.0, (0.0, 1.0)], samples[3.0, (0.0, 0.0)])  # an empty interval: no guidance
    distinct = [samples[3.0, (0.0, 0.0)], samples[3.0, (0.1, 0.7)], samples[3.0, (0.0, 1.0)]]
    assert not torch.equal(distinct[0], distinct[1]) and not torch.equal(distinct[1], distinct[2])
    with pytest.raises(ValueError, match="guidance_interval: want"):
        model.sampler(schema, {**config, "guidance_interval": [0.7, 0.1]})


@pytest.mark.skipif(not __import__("synth.step").step.cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_sampling_on_cpu_stays_within_a_few_levels_of_fp32(tmp_path):
    from synth.sample import _Sampler

    schema = ImageSchema(height=8, width=8, channels=3, num_classes=3)
    model, config, sampler = _randomised_flow(schema, sample_steps=6)  # a velocity that is not zero
    save_generator(str(tmp_path), "cflow", sampler, schema, config)
    rows = {"id": np.arange(12)}
    full = _Sampler(str(tmp_path), 0, "g", "fp32")(rows)["image"].astype(int)
    half = _Sampler(str(tmp_path), 0, "g", "bf16")(rows)["image"].astype(int)
    assert not np.array_equal(full, half)  # bf16 is in use
    assert np.abs(full - half).mean() < 2.0 and np.abs(full - half).max() <= 16


def test_sample_grids_take_a_small_share_of_training():
    from synth.train import GRID_SHARE, grid_due

    assert grid_due(False, 1.0, 0.0)  # the first epoch: no grid cost known yet
    assert not grid_due(False, 10.0, 1.0) and grid_due(False, 1.0 / GRID_SHARE, 1.0)
    assert grid_due(True, 0.0, 100.0)  # always after the last epoch


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
    from synth.step import AUTO_BF16_MIN_BATCH_VALUES, cpu_has_bf16, place_inputs, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu, 10**9) == "fp32" and resolve_precision("fp32", cpu, 10**9) == "fp32"
    assert resolve_precision("bf16", cpu, 1) == ("bf16" if cpu_has_bf16() else "fp32")  # emulated bf16 is slower
    assert resolve_precision("auto", cuda, 512 * 28 * 28) == "fp32"  # launch-bound: fp32 is faster
    assert resolve_precision("auto", cuda, AUTO_BF16_MIN_BATCH_VALUES) == "bf16"
    assert resolve_precision("bf16", cuda, 1) == "bf16" and resolve_precision("fp32", cuda, 10**9) == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", cuda, 1)
    images, labels = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    placed, same = place_inputs((images, labels), cuda, "bf16")
    assert placed.is_contiguous(memory_format=torch.channels_last) and same is labels
    assert place_inputs((images, labels), cuda, "fp32")[0] is images
    assert place_inputs((images, labels), cpu, "bf16")[0] is images  # channels_last slows CPU convolutions


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
