"""Seeded, exactly stratified train/test split, decided on narrow keys.

Each row's `source_ref` is hashed once, where the row is read (`ref_hashes`, 8 bytes a
row); the split key u = mix(ref hash, seed). Per class, the rows with the
`round(n_c * test_fraction)` smallest keys form the test split. The result depends on the
rows' source references only: neither on their order, nor on blocks or cluster size.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLIT_CODES = {"train": 1, "test": 2}
"""Per-row split codes of the curated rows (0 = rejected or pending review)."""


def ref_hashes(refs) -> np.ndarray:
    """A 64-bit hash of each source reference (unseeded: computed once per row)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(r).encode(), digest_size=8).digest(), "big") for r in refs],
                    dtype=np.uint64)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scramble of 64-bit integers."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def in_test_split(hashes: np.ndarray, labels: np.ndarray, live: np.ndarray, seed: int,
                  test_fraction: float) -> np.ndarray:
    """A boolean per row: True for the live rows that go to the test split (`hashes` from `ref_hashes`)."""
    rows = np.flatnonzero(live)
    keys = _mix(np.asarray(hashes, dtype=np.uint64)[rows] ^ _mix(np.array([seed], dtype=np.uint64))[0])
    order = np.lexsort((keys, labels[rows]))
    sorted_labels = labels[rows][order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    n_test = np.array([int(round(n * test_fraction)) for n in counts], dtype=np.int64)
    is_test = np.zeros(len(live), dtype=bool)
    is_test[rows[order]] = rank < np.repeat(n_test, counts)
    return is_test


def split_codes(live: np.ndarray, is_test: np.ndarray) -> np.ndarray:
    """Each row's code in `SPLIT_CODES` (int8; 0 where the row is not live)."""
    return np.where(live, np.where(is_test, SPLIT_CODES["test"], SPLIT_CODES["train"]), 0).astype(np.int8)
