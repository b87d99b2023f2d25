"""Improved precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al.
2020) on k-nearest-neighbour balls in feature space, with exact blockwise distances."""

from __future__ import annotations

import numpy as np

from synth.metrics.neighbours import ball_counts, kth_neighbour_radius, nearest_distance


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = 2048) -> dict[str, float]:
    """precision, recall, density, coverage of `fake` against `real` features."""
    real_radii = kth_neighbour_radius(real, k, block)
    fake_radii = kth_neighbour_radius(fake, k, block)
    in_real = ball_counts(fake, real, real_radii, block)
    precision = float(np.mean(in_real > 0))
    recall = float(np.mean(ball_counts(real, fake, fake_radii, block) > 0))
    density = float(in_real.sum() / (k * len(fake)))
    coverage = float(np.mean(nearest_distance(real, fake, block) <= real_radii))
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}
