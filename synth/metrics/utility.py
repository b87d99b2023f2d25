"""Utility: train-on-synthetic-test-on-real (TSTR) against train-on-real-test-on-real (TRTR).

One fixed small-CNN recipe trains on either set and is tested on the real test split; the
ratio says how much of the real data's usefulness the synthetic data carries. Both fits
run as Ray tasks (in parallel when CPUs allow) and stream their data from Ray Datasets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import ray.data

BATCH_SIZE = 128


def _classifier(channels: int, height: int, width: int, num_classes: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), 128), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(128, num_classes),
    )


def _inputs(batch):
    return batch["image"].permute(0, 3, 1, 2).float().div_(255.0), batch["label"].long()


@ray.remote(num_cpus=1)
def _fit_and_score(train: ray.data.Dataset, test: ray.data.Dataset, shape: tuple[int, int, int],
                   num_classes: int, epochs: int, seed: int) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = _classifier(shape[2], shape[0], shape[1], num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        model.train()
        for batch in train.iter_torch_batches(batch_size=BATCH_SIZE, local_shuffle_buffer_size=8 * BATCH_SIZE,
                                              local_shuffle_seed=seed + epoch):
            images, labels = _inputs(batch)
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    with torch.no_grad():
        for batch in test.iter_torch_batches(batch_size=512):
            images, labels = _inputs(batch)
            predicted = model(images).argmax(1)
            np.add.at(confusion, (labels.numpy(), predicted.numpy()), 1)
    return scores(confusion)


def scores(confusion: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class recall from a confusion matrix (rows = truth)."""
    true_pos = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(1), confusion.sum(0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(true_pos), where=(precision + recall) > 0)
    present = support > 0
    return {"accuracy": float(true_pos.sum() / max(confusion.sum(), 1)), "macro_f1": float(f1[present].mean()),
            "per_class_recall": recall.tolist()}


def tstr_trtr(real_train: ray.data.Dataset, real_test: ray.data.Dataset, synthetic: ray.data.Dataset,
              shape: tuple[int, int, int], num_classes: int, epochs: int, seed: int) -> dict[str, Any]:
    """TSTR and TRTR scores with the same recipe and seed; keys as in `metrics.json`."""
    columns = ["image", "label"]
    # Inputs may be sorted by class (class folders, the sampler's order): one seeded global
    # shuffle, then the per-epoch local shuffle is enough to mix every batch.
    real_train, synthetic = (d.select_columns(columns).random_shuffle(seed=seed).materialize()
                             for d in (real_train, synthetic))
    real_test = real_test.select_columns(columns)
    tstr_ref = _fit_and_score.remote(synthetic, real_test, shape, num_classes, epochs, seed)
    trtr_ref = _fit_and_score.remote(real_train, real_test, shape, num_classes, epochs, seed)
    tstr, trtr = ray.get([tstr_ref, trtr_ref])
    return {
        "tstr_accuracy": tstr["accuracy"], "trtr_accuracy": trtr["accuracy"],
        "tstr_ratio": tstr["accuracy"] / max(trtr["accuracy"], 1e-12),
        "tstr_macro_f1": tstr["macro_f1"], "trtr_macro_f1": trtr["macro_f1"],
        "tstr_per_class_recall": tstr["per_class_recall"],
    }
