"""Evaluation of synthetic images against held-out real ones, one metric family per module.

`evaluate_images` returns the stable `metrics.json` keys: utility (`utility`), distances in
the domain classifier's feature space (`fid`, `kid`, `prdc`, `inception_score`), each with
its real-train-vs-real-held-out floor, and memorisation in pixel space (`privacy`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.data

from synth.metrics.classifier import Split


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    """Scalars and per-class lists, as written to `metrics.json`."""
    class_means: dict[str, np.ndarray]
    """Mean image per class of the real train split and of the synthetic set (for the report)."""
    extractor_sha256: str


def pixels(dataset: ray.data.Dataset) -> Split:
    """All `image` arrays and `label`s of a dataset, in order, as two numpy arrays."""
    images, labels = [], []
    for batch in dataset.select_columns(["image", "label"]).iter_batches(batch_size=4096, batch_format="numpy"):
        images.append(batch["image"])
        labels.append(batch["label"])
    return np.concatenate(images), np.concatenate(labels)


def _class_means(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.stack([images[labels == k].mean(0) if np.any(labels == k) else np.zeros(images.shape[1:])
                     for k in range(num_classes)])


@ray.remote(num_cpus=1)
def _fit_rotations(images: np.ndarray, epochs: int, seed: int, recipe: str):
    import torch

    from synth.metrics import classifier

    torch.set_num_threads(1)
    return classifier.fit_rotations(images, epochs, seed, recipe)


def evaluate_images(real_train: Split, real_test: Split, synthetic: Split, num_classes: int, epochs: int, seed: int,
                    k: int = 3, copy_fraction: float = 0.1, inception_weights: str | None = None,
                    classifier_recipe: str = "auto", labelled: bool = True, augment: bool = True,
                    step: Callable[[str], None] = lambda name: None) -> Evaluation:
    """All image metrics for three in-memory splits (uint8 images (N, H, W, C), integer labels);
    with `inception_weights` (a local FID Inception-v3 file) also `fid_inception` and its floor.
    `step(name)` is told which metric is being computed (for a progress display);
    `classifier_recipe` picks the fixed classifier (`classifier.recipe_for`). Without labels
    (`labelled` false) the utility metrics and the domain Inception Score are skipped and the
    extractor is trained self-supervised (`classifier.fit_rotations`); `augment` false skips the
    real+synthetic fit (`augment_accuracy`, `augment_gain`)."""
    from synth.metrics import classifier
    from synth.metrics.fid import fid
    from synth.metrics.inception_score import inception_score
    from synth.metrics.kid import kid
    from synth.metrics.prdc import prdc
    from synth.metrics.privacy import memorisation
    from synth.metrics.utility import utility

    if labelled:
        step("tstr / trtr")
        metrics, extractor = utility(real_train, real_test, synthetic, num_classes, epochs, seed, classifier_recipe,
                                     augment)
    else:
        step("feature extractor (rotation prediction)")
        extractor = ray.get(_fit_rotations.remote(real_train[0], epochs, seed, classifier_recipe))
        metrics = {}
    step("fid_domain / kid_domain")
    train_emb, test_emb, syn_emb = (classifier.embed(extractor, split[0]) for split in (real_train, real_test, synthetic))
    metrics["fid_domain"] = fid(syn_emb["features"], test_emb["features"])
    metrics["fid_domain_floor"] = fid(train_emb["features"], test_emb["features"])
    metrics["fid_domain_ratio"] = metrics["fid_domain"] / max(metrics["fid_domain_floor"], 1e-12)
    metrics["kid_domain"] = kid(syn_emb["features"], test_emb["features"])
    metrics["kid_domain_floor"] = kid(train_emb["features"], test_emb["features"])
    if labelled:
        metrics["is_domain"] = inception_score(syn_emb["probs"])
        metrics["is_domain_real"] = inception_score(test_emb["probs"])
    step("precision / recall / density / coverage")
    metrics.update(prdc(test_emb["features"], syn_emb["features"], k=k))
    metrics.update({f"{key}_floor": value for key, value in prdc(test_emb["features"], train_emb["features"], k=k).items()})

    if inception_weights:
        step("fid_inception")
        from synth.metrics.fid import frechet_distance
        from synth.metrics.inception import inception_stats

        test_stats, syn_stats, train_stats = inception_stats(inception_weights,
                                                             [real_test[0], synthetic[0], real_train[0]])
        metrics["fid_inception"] = frechet_distance(syn_stats, test_stats)
        metrics["fid_inception_floor"] = frechet_distance(train_stats, test_stats)

    step("nn_copy_fraction / dcr")
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
    metrics.update(memorisation(flat(synthetic[0]), flat(real_train[0]), flat(real_test[0]), copy_fraction))
    means = {"real": _class_means(*real_train, num_classes), "synthetic": _class_means(*synthetic, num_classes)}
    return Evaluation(metrics=metrics, class_means=means, extractor_sha256=classifier.weights_sha256(extractor))
