"""Memorisation: is a synthetic sample closer to the training data than real unseen data is?

Distances are Euclidean in pixel space ([0, 1] per pixel). DCR (distance to closest
record) of each synthetic sample to the training split is compared with the same for the
held-out real split: a ratio well below 1 means the generator reproduces training images.
A synthetic sample is a near-copy when its DCR is below `copy_fraction` × the median
held-out DCR.
"""

from __future__ import annotations

import numpy as np

from synth.metrics.neighbours import nearest_distance


def memorisation(synthetic: np.ndarray, train: np.ndarray, holdout: np.ndarray,
                 copy_fraction: float = 0.1) -> dict[str, float]:
    """`dcr_ratio` (median synthetic DCR / median holdout DCR), `nn_copy_fraction`."""
    synthetic_dcr = nearest_distance(synthetic, train, block=1024)
    figures = closest_record_figures(synthetic_dcr, nearest_distance(holdout, train, block=1024))
    return {**figures, "nn_copy_fraction": float(np.mean(synthetic_dcr < copy_fraction * figures["dcr_median_holdout"]))}


def closest_record_figures(synthetic_dcr: np.ndarray, holdout_dcr: np.ndarray) -> dict[str, float]:
    """Median distances to the closest training record of synthetic and of held-out real
    rows, and their ratio (well below 1: the generator reproduces training records)."""
    reference = float(np.median(holdout_dcr))
    return {"dcr_median_synthetic": float(np.median(synthetic_dcr)), "dcr_median_holdout": reference,
            "dcr_ratio": float(np.median(synthetic_dcr) / max(reference, 1e-12))}
