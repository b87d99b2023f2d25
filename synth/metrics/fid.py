"""Fréchet distance between Gaussians fitted to two feature sets (FID-style).

`GaussianStats` accumulates count, sum and sum of outer products in float64; two stats
merge exactly, so the distance over a sharded dataset equals the one over all rows at
once, for any block or batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GaussianStats:
    count: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> GaussianStats:
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStats:
        x = np.asarray(features, dtype=np.float64)
        return cls(len(x), x.sum(0), x.T @ x)

    def merge(self, other: GaussianStats) -> GaussianStats:
        return GaussianStats(self.count + other.count, self.total + other.total, self.outer + other.outer)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.count
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return mean, cov


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """||μa − μb||² + Tr(Σa + Σb − 2 (Σa Σb)^½).

    Tr (Σa Σb)^½ is the sum of the square roots of the eigenvalues of the symmetric PSD
    matrix Σa^½ Σb Σa^½, which stays exact and real when the covariances are singular
    (dead ReLU features), where a general matrix square root loses precision.
    """
    mu_a, cov_a = a.mean_cov()
    mu_b, cov_b = b.mean_cov()
    root_a = _psd_sqrt(cov_a)
    product = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0.0, None)).sum()
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def fid(features_a: np.ndarray, features_b: np.ndarray, block: int = 4096) -> float:
    """Fréchet distance of two feature sets, accumulated block by block."""
    def stats(x):
        acc = GaussianStats.empty(x.shape[1])
        for start in range(0, len(x), block):
            acc = acc.merge(GaussianStats.of(x[start:start + block]))
        return acc

    return frechet_distance(stats(features_a), stats(features_b))
