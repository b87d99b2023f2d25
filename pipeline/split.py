"""Seeded, exactly stratified train/test split, decided on narrow keys.

Each row gets a key u = hash(seed, source_ref) in [0, 1). Per class, the rows with the
`round(n_c * test_fraction)` smallest keys form the test split. The result depends on the
rows' source references only: neither on their order, nor on blocks or cluster size.
"""

from __future__ import annotations

import hashlib

import numpy as np


def split_keys(refs: list[str], seed: int) -> np.ndarray:
    salt = str(seed).encode()
    return np.array([int.from_bytes(hashlib.blake2b(r.encode(), digest_size=8, key=salt).digest(), "big")
                     for r in refs], dtype=np.uint64)


def in_test_split(refs: list[str], labels: np.ndarray, live: np.ndarray, seed: int, test_fraction: float) -> np.ndarray:
    """A boolean per row: True for the live rows that go to the test split."""
    rows = np.flatnonzero(live)
    keys = split_keys([refs[i] for i in rows], seed)
    order = np.lexsort((keys, labels[rows]))
    sorted_labels = labels[rows][order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    n_test = np.array([int(round(n * test_fraction)) for n in counts], dtype=np.int64)
    is_test = np.zeros(len(live), dtype=bool)
    is_test[rows[order]] = rank < np.repeat(n_test, counts)
    return is_test
