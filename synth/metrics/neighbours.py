"""Exact nearest-neighbour distances, blockwise: the one k-NN search behind precision /
recall / density / coverage (`prdc`), memorisation in pixel space (`privacy`) and the
distance to the closest record of table rows (`tabular`). A block of queries against all
references at a time, so memory stays at `block` × references distances."""

from __future__ import annotations

import numpy as np

BLOCK = 2048


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All squared Euclidean distances between the rows of `a` and of `b` (clipped at 0)."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def nearest_distance(queries: np.ndarray, references: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Distance from each query to its nearest reference."""
    out = np.empty(len(queries))
    for i in range(0, len(queries), block):
        out[i:i + block] = np.sqrt(squared_distances(queries[i:i + block], references).min(1))
    return out


def kth_neighbour_radius(x: np.ndarray, k: int, block: int = BLOCK) -> np.ndarray:
    """Distance from each row of `x` to its k-th nearest other row of `x`."""
    radii = np.empty(len(x))
    for i in range(0, len(x), block):
        d = squared_distances(x[i:i + block], x)
        rows = np.arange(d.shape[0])
        d[rows, i + rows] = np.inf  # a point is not its own neighbour
        radii[i:i + block] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
    return radii


def ball_counts(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """For each query, how many balls (centre, radius) contain it."""
    counts = np.empty(len(queries), dtype=np.int64)
    for i in range(0, len(queries), block):
        counts[i:i + block] = (squared_distances(queries[i:i + block], centres) <= radii[None, :] ** 2).sum(1)
    return counts
