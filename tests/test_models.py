import numpy as np
import torch

from synth.models import get_model
from synth.models.base import ImageSchema, load_generator, row_noise, save_generator

SCHEMA = ImageSchema(height=12, width=12, channels=1, num_classes=3)


def test_cvae_step_and_sample_shapes():
    model = get_model("cvae")
    torch.manual_seed(0)
    module = model.build(SCHEMA, {"latent_dim": 4})
    images, labels = torch.rand(5, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1])
    losses = model.training_step(module, images, labels)
    assert set(losses) == {"loss", "reconstruction", "kl"} and losses["loss"].ndim == 0
    losses["loss"].backward()
    module.eval()
    out = model.sample(module, labels, torch.randn(5, model.noise_dim({"latent_dim": 4})))
    assert out.shape == (5, 1, 12, 12) and 0 <= out.min() and out.max() <= 1


def test_cvae_learns_on_a_toy_problem():
    model = get_model("cvae")
    torch.manual_seed(0)
    module = model.build(SCHEMA, {"latent_dim": 4})
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    labels = torch.arange(60) % 3
    images = torch.zeros(60, 1, 12, 12)
    for i, label in enumerate(labels):
        images[i, 0, :, 4 * label: 4 * label + 4] = 1.0  # a bar whose column is the class
    first = None
    for _ in range(60):
        loss = model.training_step(module, images, labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first or float(loss.detach())
    assert float(loss) < 0.3 * first
    module.eval()
    samples = model.sample(module, torch.tensor([0, 1, 2]), torch.zeros(3, 4))
    bars = samples[:, 0].mean(dim=1).reshape(3, 3, 4).mean(dim=2)  # brightness of each column band
    assert torch.equal(bars.argmax(dim=1), torch.tensor([0, 1, 2]))


def test_checkpoint_round_trip_without_pickle(tmp_path):
    model = get_model("cvae")
    module = model.build(SCHEMA, {"latent_dim": 4}).eval()
    save_generator(str(tmp_path), "cvae", module, SCHEMA, {"latent_dim": 4})
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    _, loaded, schema, config = load_generator(str(tmp_path))
    assert schema == SCHEMA and config == {"latent_dim": 4}
    noise, labels = torch.randn(2, 4), torch.tensor([0, 2])
    assert torch.equal(model.sample(module, labels, noise), model.sample(loaded, labels, noise))


def test_row_noise_depends_on_row_id_only():
    ids = np.arange(10)
    assert np.array_equal(row_noise(1, ids, 3)[4:6], row_noise(1, ids[4:6], 3))
    assert not np.array_equal(row_noise(1, ids, 3), row_noise(2, ids, 3))
