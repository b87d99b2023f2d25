"""The one fixed classifier recipe behind TSTR/TRTR and the domain feature extractor.

Two networks, chosen by the kind of image (`recipe_for`), each fitted with Adam and a
one-cycle learning rate (peak 3e-3), batch 128, seeded, on in-memory uint8 arrays
(evaluation sets are held-out and sample sets):

- `small` (grey images: digits, scans): two 3×3 convolutions with max pooling, no
  augmentation;
- `photo` (colour images): one batch-normalised 3×3 convolution per octave (32, 64, 128,
  then 128 channels) down to a grid of at least 4 pixels, global average pooling, trained
  with the augmentations photos need: a random crop of the image padded by an eighth of its
  side (reflected) and a horizontal flip, each drawn per image from the seeded generator.

Both end in the same 128-feature penultimate layer, the embedding the distribution metrics
use, so no weights are downloaded: the extractor is trained on the real train split. The
same recipe trains TSTR's and TRTR's classifier.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

Split = tuple[np.ndarray, np.ndarray]
"""uint8 images (N, H, W, C) and integer labels, in memory: evaluation sets are held-out and sample sets."""

BATCH_SIZE = 128
PEAK_LR = 3e-3
FEATURES = 128
RECIPES = ("small", "photo")


def recipe_for(channels: int, requested: str = "auto") -> str:
    """`requested` (auto, small, photo); auto is `photo` for colour images, else `small`."""
    if requested == "auto":
        return "photo" if channels == 3 else "small"
    if requested not in RECIPES:
        raise ValueError(f"evaluate.classifier: unknown recipe '{requested}'; known: auto, {', '.join(RECIPES)}")
    return requested


def build(channels: int, height: int, width: int, num_classes: int, recipe: str = "auto"):
    from torch import nn

    recipe = recipe_for(channels, recipe)
    if recipe == "small":
        model = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * (height // 4) * (width // 4), FEATURES), nn.ReLU(), nn.Dropout(0.25),
            nn.Linear(FEATURES, num_classes),
        )
    else:
        layers, inputs, side = [], channels, min(height, width)
        for level in range(4):
            outputs = 32 * min(2 ** level, 4)
            layers += [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]
            inputs = outputs
            if side // 2 < 4 or level == 3:
                break
            layers.append(nn.MaxPool2d(2))
            side //= 2
        model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, FEATURES), nn.ReLU(),
                              nn.Dropout(0.25), nn.Linear(FEATURES, num_classes))
    model.recipe = recipe
    return model


def _augment(x, generator, flips: bool = True):
    """A random crop of `x` (N, C, H, W) reflect-padded by H/8, then (with `flips`) a
    horizontal flip of half the images, per image."""
    import torch
    from torch.nn import functional as F

    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(h)[None])[:, :, None]
    cols = (left[:, None] + torch.arange(w)[None])[:, None, :]
    cropped = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (N, C, H, W)
    if not flips:
        return cropped
    flipped = torch.rand(n, generator=generator) < 0.5
    return torch.where(flipped[:, None, None, None], cropped.flip(3), cropped)


def _inputs(images: np.ndarray):
    import torch

    return torch.tensor(images).permute(0, 3, 1, 2).float().div_(255.0)  # a copy: shared arrays are read-only


def fit(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, seed: int, recipe: str = "auto",
        flips: bool = True):
    """Train the recipe on uint8 `images` (N, H, W, C) and integer `labels`, shuffled (and, for
    photos, augmented: `flips` may turn the flips off) per epoch by a generator seeded from `seed`."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    height, width, channels = images.shape[1:]
    model = build(channels, height, width, num_classes, recipe)
    augment = model.recipe == "photo"
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
            inputs = _inputs(images[rows])
            F.cross_entropy(model(_augment(inputs, generator, flips) if augment else inputs), targets[rows]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


ROTATION_IMAGES = 10_000
"""The self-supervised extractor learns from at most this many images (in each rotation)."""


def fit_rotations(images: np.ndarray, epochs: int, seed: int, recipe: str = "auto"):
    """A feature extractor for images without labels: the recipe trained to tell by which
    quarter turn (0°, 90°, 180°, 270°; 0° or 180° for non-square images) each image was
    rotated (Gidaris et al. 2018), with crops but no flips (a flip turns a 90° rotation into a
    270° one). At most `ROTATION_IMAGES` images, chosen by `seed`; `epochs` passes' worth of
    steps over them."""
    if len(images) > ROTATION_IMAGES:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), ROTATION_IMAGES, replace=False))]
    turns = (0, 1, 2, 3) if images.shape[1] == images.shape[2] else (0, 2)
    rotated = np.concatenate([np.rot90(images, turn, axes=(1, 2)) for turn in turns])
    labels = np.repeat(np.arange(len(turns)), len(images))
    return fit(np.ascontiguousarray(rotated), labels, len(turns), max(1, -(-epochs // len(turns))), seed, recipe,
               flips=False)


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
