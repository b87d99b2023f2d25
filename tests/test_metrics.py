"""Metric invariances: agreement with reference formulas, batch-size independence, sanity."""

import numpy as np
import pytest
from scipy import linalg
from sklearn.metrics import f1_score

from pipeline.gates import failed_gates, parse_condition, validate_gates
from synth.metrics.classifier import scores
from synth.metrics.fid import GaussianStats, fid, frechet_distance
from synth.metrics.inception_score import inception_score
from synth.metrics.kid import kid
from synth.metrics.prdc import prdc
from synth.metrics.privacy import memorisation

RNG = np.random.default_rng(0)
REAL = RNG.normal(size=(600, 8))
REAL_2 = RNG.normal(size=(500, 8))
NOISE = RNG.uniform(-4, 4, size=(500, 8))


def test_scores_match_scikit_learn():
    truth = RNG.integers(0, 4, 500)
    predicted = np.where(RNG.random(500) < 0.7, truth, RNG.integers(0, 4, 500))
    confusion = np.zeros((4, 4), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    result = scores(confusion)
    assert abs(result["accuracy"] - np.mean(truth == predicted)) < 1e-12
    assert abs(result["macro_f1"] - f1_score(truth, predicted, average="macro")) < 1e-12


def test_frechet_distance_matches_a_direct_scipy_computation():
    mu_a, mu_b = REAL.mean(0), NOISE.mean(0)
    cov_a, cov_b = np.cov(REAL, rowvar=False), np.cov(NOISE, rowvar=False)
    direct = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert fid(REAL, NOISE) == pytest.approx(direct, rel=1e-9)


def test_stats_merge_exactly_and_values_do_not_depend_on_block_size():
    merged = GaussianStats.of(REAL[:100]).merge(GaussianStats.of(REAL[100:]))
    assert frechet_distance(merged, GaussianStats.of(NOISE)) == pytest.approx(fid(REAL, NOISE), rel=1e-9)
    assert fid(REAL, NOISE, block=7) == pytest.approx(fid(REAL, NOISE, block=4096), rel=1e-6)
    assert kid(REAL, NOISE, block=13) == pytest.approx(kid(REAL, NOISE, block=2048), rel=1e-6)
    assert prdc(REAL, NOISE, block=17) == prdc(REAL, NOISE, block=2048)


def test_distances_separate_same_distribution_from_noise():
    assert fid(REAL, REAL_2) < 0.1 * fid(REAL, NOISE)
    assert abs(kid(REAL, REAL_2)) < 0.05 * kid(REAL, NOISE)


def test_precision_and_recall_of_a_set_against_itself():
    same = prdc(REAL, REAL.copy(), k=3)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = prdc(REAL, REAL + 50.0, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0 and far["density"] == 0.0


def test_inception_score_bounds():
    confident = np.eye(5)[np.arange(500) % 5]
    assert inception_score(confident) == pytest.approx(5.0, rel=1e-6)
    assert inception_score(np.tile(np.eye(5)[0], (500, 1))) == pytest.approx(1.0)


def test_memorisation_flags_copies():
    train, holdout = RNG.random((300, 20)), RNG.random((100, 20))
    copies = memorisation(train[:50] + 1e-4, train, holdout)
    assert copies["nn_copy_fraction"] == 1.0 and copies["dcr_ratio"] < 0.01
    fresh = memorisation(RNG.random((100, 20)), train, holdout)
    assert fresh["nn_copy_fraction"] == 0.0 and 0.8 < fresh["dcr_ratio"] < 1.25


def test_gates():
    assert parse_condition(">= 0.9") == (">=", 0.9) and parse_condition("<3e-1") == ("<", 0.3)
    assert validate_gates({"tstr_ratio": "== 0"})
    with pytest.raises(ValueError, match="unknown metric 'fid'"):
        validate_gates({"fid": "<= 3"})
    failures = failed_gates({"tstr_ratio": ">= 0.9", "nn_copy_fraction": "== 0", "fid_domain_ratio": "<= 3"},
                            {"tstr_ratio": 0.85, "nn_copy_fraction": 0.0})
    assert failures == ["tstr_ratio = 0.85 (needs >= 0.9)", "fid_domain_ratio not computed (needs <= 3)"]


def test_fid_inception_from_a_local_weights_file(tmp_path):
    import torch

    from synth.metrics import inception

    torch.manual_seed(0)
    weights = tmp_path / "fid_inception.pth"
    torch.save({**inception.build().state_dict(), "fc.weight": torch.zeros(1008, 2048)}, weights)
    real = RNG.integers(0, 256, (6, 20, 20, 1), dtype=np.uint8)
    shifted = np.clip(real.astype(int) + 90, 0, 255).astype(np.uint8)
    same, copy, far = inception.inception_stats(str(weights), [real, real.copy(), shifted], actors=1)
    assert frechet_distance(same, copy) == pytest.approx(0.0, abs=1e-6)
    distance = frechet_distance(same, far)
    assert distance > 0
    # Block size does not change the value: features are merged as exact statistics.
    inception.BLOCK, saved = 4, inception.BLOCK
    try:
        blocked = inception.inception_stats(str(weights), [real, shifted], actors=1)
    finally:
        inception.BLOCK = saved
    assert frechet_distance(*blocked) == pytest.approx(distance, rel=1e-6)

    with pytest.raises(ValueError, match="is not a local file"):
        inception.load(str(tmp_path / "missing.pth"))
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not FID Inception-v3 weights"):
        inception.load(str(tmp_path / "other.pth"))


def test_the_photo_recipe_augments_per_image_and_learns_colour_classes():
    import torch

    from synth.metrics import classifier

    assert classifier.recipe_for(3) == "photo" and classifier.recipe_for(1) == "small"
    assert classifier.recipe_for(1, "photo") == "photo"
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    first = classifier._augment(x, torch.Generator().manual_seed(0))
    assert first.shape == x.shape and torch.equal(first, classifier._augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, x)
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 3
    images = rng.integers(0, 60, size=(120, 16, 16, 3)).astype(np.uint8)
    images[np.arange(120), :, :, labels] += 150  # the class is the brightest channel
    model = classifier.fit(images[:90], labels[:90], 3, 8, seed=0)
    assert model.recipe == "photo"
    probs = classifier.embed(model, images[90:])["probs"]
    assert (probs.argmax(1) == labels[90:]).mean() >= 0.9


def test_the_rotation_extractor_tells_quarter_turns_apart():
    from synth.metrics import classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 40, size=(60, 16, 16, 1)).astype(np.uint8)
    images[:, :4, :8] = 250  # an upright mark: top left
    model = classifier.fit_rotations(images[:40], epochs=24, seed=0)
    turned = np.concatenate([np.rot90(images[40:], k, axes=(1, 2)) for k in range(4)])
    probs = classifier.embed(model, np.ascontiguousarray(turned))["probs"]
    assert probs.shape == (80, 4) and (probs.argmax(1) == np.repeat(np.arange(4), 20)).mean() >= 0.9
    wide = rng.integers(0, 40, size=(10, 8, 16, 1)).astype(np.uint8)
    assert classifier.embed(classifier.fit_rotations(wide, 2, 0), wide)["probs"].shape == (10, 2)  # 0° or 180°
