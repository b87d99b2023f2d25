"""The one fixed classifier recipe behind TSTR/TRTR and the domain feature extractor.

A small CNN, Adam with a one-cycle learning rate (peak 3e-3), batch 128, seeded, fitted on
in-memory uint8 arrays (evaluation sets are held-out and sample sets). Its
penultimate layer (128 features) is the embedding the distribution metrics use, so no
weights are downloaded: the extractor is trained on the real train split.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

BATCH_SIZE = 128
PEAK_LR = 3e-3
FEATURES = 128


def build(channels: int, height: int, width: int, num_classes: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (height // 4) * (width // 4), FEATURES), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(FEATURES, num_classes),
    )


def _inputs(images: np.ndarray):
    import torch

    return torch.tensor(images).permute(0, 3, 1, 2).float().div_(255.0)  # a copy: shared arrays are read-only


def fit(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, seed: int):
    """Train the recipe on uint8 `images` (N, H, W, C) and integer `labels`, shuffled per epoch
    by a generator seeded from `seed`."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    height, width, channels = images.shape[1:]
    model = build(channels, height, width, num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=PEAK_LR)
    steps_per_epoch = math.ceil(len(labels) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=PEAK_LR, total_steps=epochs * steps_per_epoch)
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=generator).numpy()
        for start in range(0, len(order), BATCH_SIZE):
            rows = np.sort(order[start:start + BATCH_SIZE])
            optimizer.zero_grad()
            F.cross_entropy(model(_inputs(images[rows])), targets[rows]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def embed(model, images: np.ndarray, block: int = 1024) -> dict[str, np.ndarray]:
    """Penultimate features and class probabilities of every image (in order)."""
    import torch

    head, last = model[:-1], model[-1]
    features, probs = [], []
    with torch.no_grad():
        for start in range(0, len(images), block):
            hidden = head(_inputs(images[start:start + block]))
            features.append(hidden.numpy().astype(np.float64))
            probs.append(torch.softmax(last(hidden), 1).numpy().astype(np.float64))
    return {"features": np.concatenate(features), "probs": np.concatenate(probs)}


def confusion(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix (rows = truth) of the argmax of `probs`."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), probs.argmax(1)), 1)
    return matrix


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
