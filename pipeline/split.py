"""Seeded, exactly stratified train/test split.

Each row gets a key u = hash(seed, source_ref) in [0, 1). Per class, the rows with the
`round(n_c * test_fraction)` smallest keys form the test split. Only a narrow (label, u)
table is shuffled to find the per-class thresholds, and the result depends on neither
block order nor cluster size.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import ray.data


def _keys(refs: list[str], seed: int) -> np.ndarray:
    salt = str(seed).encode()
    return np.array(
        [int.from_bytes(hashlib.blake2b(r.encode(), digest_size=8, key=salt).digest(), "big") / 2**64 for r in refs]
    )


def _add_key(table: pa.Table, seed: int) -> pa.Table:
    return table.append_column("split_key", pa.array(_keys(table["source_ref"].to_pylist(), seed)))


def _threshold(group: dict[str, np.ndarray], test_fraction: float) -> dict[str, np.ndarray]:
    keys = np.sort(group["split_key"])
    n_test = int(round(len(keys) * test_fraction))
    threshold = keys[n_test - 1] if n_test else -1.0
    return {"label": group["label"][:1], "threshold": np.array([threshold])}


def _assign(table: pa.Table, thresholds: dict[int, float]) -> pa.Table:
    keys = table["split_key"].to_numpy()
    limits = np.array([thresholds[int(v)] for v in table["label"].to_numpy()])
    split = np.where(keys <= limits, "test", "train")
    return table.drop_columns(["split_key"]).append_column("split", pa.array(split, pa.string()))


def assign_splits(dataset: ray.data.Dataset, seed: int, test_fraction: float) -> ray.data.Dataset:
    """Add a `split` column (`train`/`test`) to curated rows with int `label` and `source_ref`."""
    keyed = dataset.map_batches(_add_key, fn_kwargs={"seed": seed}, batch_format="pyarrow")
    found = (
        keyed.select_columns(["label", "split_key"])
        .groupby("label")
        .map_groups(_threshold, fn_kwargs={"test_fraction": test_fraction}, batch_format="numpy")
    )
    thresholds = {int(row["label"]): float(row["threshold"]) for row in found.iter_rows()}
    return keyed.map_batches(_assign, fn_kwargs={"thresholds": thresholds}, batch_format="pyarrow")
