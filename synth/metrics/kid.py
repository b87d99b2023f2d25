"""Kernel distance (KID-style): unbiased MMD² with the cubic polynomial kernel
k(x, y) = (x·y / d + 1)³, summed exactly over all pairs block by block."""

from __future__ import annotations

import numpy as np


def _kernel_sum(a: np.ndarray, b: np.ndarray, block: int, skip_diagonal: bool) -> float:
    dim = a.shape[1]
    total = 0.0
    for i in range(0, len(a), block):
        values = (a[i:i + block] @ b.T / dim + 1.0) ** 3
        if skip_diagonal:
            rows = np.arange(values.shape[0])
            values[rows, i + rows] = 0.0
        total += float(values.sum())
    return total


def kid(x: np.ndarray, y: np.ndarray, block: int = 2048) -> float:
    """Unbiased MMD² between feature sets `x` and `y` (0 in expectation for one distribution)."""
    m, n = len(x), len(y)
    xx = _kernel_sum(x, x, block, skip_diagonal=True) / (m * (m - 1))
    yy = _kernel_sum(y, y, block, skip_diagonal=True) / (n * (n - 1))
    xy = _kernel_sum(x, y, block, skip_diagonal=False) / (m * n)
    return xx + yy - 2 * xy
