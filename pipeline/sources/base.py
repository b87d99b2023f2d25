"""What every source returns, and the batching helpers they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray.data

RECORDS_PER_BLOCK = 4096


@dataclass
class Collected:
    """A source opened for streaming.

    Attributes:
        dataset: lazily executed rows (`image` or `image_bytes`, optional `label`, `source_ref`).
        fingerprints: identity of each input (URL, size, sha256) for lineage.
        rows: how many rows the dataset yields, where known before reading (progress).
    """

    dataset: ray.data.Dataset
    fingerprints: list[dict[str, Any]] = field(default_factory=list)
    rows: int | None = None


def num_blocks(rows: int, per_block: int = RECORDS_PER_BLOCK) -> int:
    return max(1, -(-rows // per_block))


def paths_dataset(paths: list[str], per_block: int, **columns: list) -> ray.data.Dataset:
    """A dataset of file paths (plus any small per-file columns) to fan file reads out over the cluster."""
    table = pa.table({"path": pa.array(paths, pa.string()), **columns})
    # from_blocks types the blocks here; from_arrow runs a task per block for that, which
    # waits seconds for workers that are still starting.
    return ray.data.from_blocks([table.slice(start, per_block) for start in range(0, max(1, len(paths)), per_block)])
