"""The one fixed classifier recipe behind TSTR/TRTR and the domain feature extractor.

A small CNN, Adam 1e-3, batch 128, seeded; data streamed from Ray Datasets. Its
penultimate layer (128 features) is the embedding the distribution metrics use, so no
weights are downloaded: the extractor is trained on the real train split.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import ray.data

BATCH_SIZE = 128
FEATURES = 128


def build(channels: int, height: int, width: int, num_classes: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (height // 4) * (width // 4), FEATURES), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(FEATURES, num_classes),
    )


def inputs(batch):
    return batch["image"].permute(0, 3, 1, 2).float().div_(255.0), batch["label"].long()


def fit(train: ray.data.Dataset, shape: tuple[int, int, int], num_classes: int, epochs: int, seed: int):
    """Train the recipe on `train` (rows `image`, `label`; already globally shuffled)."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    model = build(shape[2], shape[0], shape[1], num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        model.train()
        for batch in train.iter_torch_batches(batch_size=BATCH_SIZE, local_shuffle_buffer_size=8 * BATCH_SIZE,
                                              local_shuffle_seed=seed + epoch):
            images, labels = inputs(batch)
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
    return model.eval()


def confusion(model, test: ray.data.Dataset, num_classes: int) -> np.ndarray:
    import torch

    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    with torch.no_grad():
        for batch in test.iter_torch_batches(batch_size=512):
            images, labels = inputs(batch)
            np.add.at(matrix, (labels.numpy(), model(images).argmax(1).numpy()), 1)
    return matrix


def embed(model, dataset: ray.data.Dataset) -> dict[str, np.ndarray]:
    """Penultimate features, class probabilities and labels of every row (in order)."""
    import torch

    head, last = model[:-1], model[-1]
    features, probs, labels = [], [], []
    with torch.no_grad():
        for batch in dataset.select_columns(["image", "label"]).iter_torch_batches(batch_size=512):
            images, batch_labels = inputs(batch)
            hidden = head(images)
            features.append(hidden.numpy().astype(np.float64))
            probs.append(torch.softmax(last(hidden), 1).numpy().astype(np.float64))
            labels.append(batch_labels.numpy())
    return {"features": np.concatenate(features), "probs": np.concatenate(probs), "labels": np.concatenate(labels)}


def weights_sha256(model) -> str:
    """Identity of a trained extractor for lineage: sha256 over its named weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def scores(matrix: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class recall from a confusion matrix (rows = truth)."""
    true_pos = np.diag(matrix).astype(float)
    support, predicted = matrix.sum(1), matrix.sum(0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(true_pos), where=(precision + recall) > 0)
    present = support > 0
    return {"accuracy": float(true_pos.sum() / max(matrix.sum(), 1)), "macro_f1": float(f1[present].mean()),
            "per_class_recall": recall.tolist()}
