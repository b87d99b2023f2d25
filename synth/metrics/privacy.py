"""Memorisation: is a synthetic sample closer to the training data than real unseen data is?

Distances are Euclidean in pixel space ([0, 1] per pixel). DCR (distance to closest
record) of each synthetic sample to the training split is compared with the same for the
held-out real split: a ratio well below 1 means the generator reproduces training images.
A synthetic sample is a near-copy when its DCR is below `copy_fraction` × the median
held-out DCR.
"""

from __future__ import annotations

import numpy as np

from synth.metrics.prdc import _sq_distances


def closest_record_distance(queries: np.ndarray, records: np.ndarray, block: int = 1024) -> np.ndarray:
    out = np.empty(len(queries))
    for i in range(0, len(queries), block):
        out[i:i + block] = np.sqrt(_sq_distances(queries[i:i + block], records).min(1))
    return out


def memorisation(synthetic: np.ndarray, train: np.ndarray, holdout: np.ndarray,
                 copy_fraction: float = 0.1) -> dict[str, float]:
    """`dcr_ratio` (median synthetic DCR / median holdout DCR), `nn_copy_fraction`."""
    synthetic_dcr = closest_record_distance(synthetic, train)
    holdout_dcr = closest_record_distance(holdout, train)
    reference = float(np.median(holdout_dcr))
    return {
        "dcr_median_synthetic": float(np.median(synthetic_dcr)),
        "dcr_median_holdout": reference,
        "dcr_ratio": float(np.median(synthetic_dcr) / max(reference, 1e-12)),
        "nn_copy_fraction": float(np.mean(synthetic_dcr < copy_fraction * reference)),
    }
