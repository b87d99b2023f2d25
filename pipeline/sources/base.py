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
        preview: the dataset's first rows, where the source reads them on the driver for less
            than a Ray Data pass costs (a folder's first files); else None.
    """

    dataset: ray.data.Dataset
    fingerprints: list[dict[str, Any]] = field(default_factory=list)
    rows: int | None = None
    preview: list[dict[str, Any]] | None = None


def num_blocks(rows: int, per_block: int = RECORDS_PER_BLOCK) -> int:
    return max(1, -(-rows // per_block))


MIN_FILES_PER_BLOCK = 64
"""Fewer files than this per read task cost more in task overhead than they gain in spread."""


def paths_dataset(paths: list[str], per_block: int, **columns: list) -> ray.data.Dataset:
    """A dataset of file paths (plus any small per-file columns) to fan file reads out over the
    cluster: at most `per_block` files per block, and blocks enough for every CPU twice over
    (a few thousand large photos are then read by every node, not one task)."""
    spread = -(-len(paths) // (2 * max(1, int(ray.cluster_resources().get("CPU", 1)))))
    per_block = max(1, min(per_block, max(MIN_FILES_PER_BLOCK, spread)))
    table = pa.table({"path": pa.array(paths, pa.string()), **columns})
    # from_blocks types the blocks here; from_arrow runs a task per block for that, which
    # waits seconds for workers that are still starting.
    return ray.data.from_blocks([table.slice(start, per_block) for start in range(0, max(1, len(paths)), per_block)])
