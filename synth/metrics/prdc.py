"""Improved precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al.
2020) on k-nearest-neighbour balls in feature space, with exact blockwise distances."""

from __future__ import annotations

import numpy as np


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def kth_neighbour_radius(x: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Distance from each row of `x` to its k-th nearest other row of `x`."""
    radii = np.empty(len(x))
    for i in range(0, len(x), block):
        d = _sq_distances(x[i:i + block], x)
        rows = np.arange(d.shape[0])
        d[rows, i + rows] = np.inf  # a point is not its own neighbour
        radii[i:i + block] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
    return radii


def _ball_counts(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> np.ndarray:
    """For each query, how many balls (centre, radius) contain it."""
    counts = np.empty(len(queries), dtype=np.int64)
    for i in range(0, len(queries), block):
        counts[i:i + block] = (_sq_distances(queries[i:i + block], centres) <= radii[None, :] ** 2).sum(1)
    return counts


def _nearest_distance(queries: np.ndarray, refs: np.ndarray, block: int) -> np.ndarray:
    out = np.empty(len(queries))
    for i in range(0, len(queries), block):
        out[i:i + block] = np.sqrt(_sq_distances(queries[i:i + block], refs).min(1))
    return out


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = 2048) -> dict[str, float]:
    """precision, recall, density, coverage of `fake` against `real` features."""
    real_radii = kth_neighbour_radius(real, k, block)
    fake_radii = kth_neighbour_radius(fake, k, block)
    in_real = _ball_counts(fake, real, real_radii, block)
    precision = float(np.mean(in_real > 0))
    recall = float(np.mean(_ball_counts(real, fake, fake_radii, block) > 0))
    density = float(in_real.sum() / (k * len(fake)))
    coverage = float(np.mean(_nearest_distance(real, fake, block) <= real_radii))
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}
