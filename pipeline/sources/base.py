"""What every source returns, and the batching helpers they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray.data

RECORDS_PER_BLOCK = 4096


@dataclass
class Collected:
    """A source opened for streaming.

    Attributes:
        dataset: lazily executed rows (`image` or `image_bytes`, optional `label`, `source_ref`).
        fingerprints: identity of each input (URL, size, sha256) for lineage.
    """

    dataset: ray.data.Dataset
    fingerprints: list[dict[str, Any]] = field(default_factory=list)


def num_blocks(rows: int, per_block: int = RECORDS_PER_BLOCK) -> int:
    return max(1, -(-rows // per_block))


def paths_dataset(paths: list[str], per_block: int) -> ray.data.Dataset:
    """A dataset of file paths (one small column) to fan file reads out over the cluster."""
    return ray.data.from_items([{"path": p} for p in paths], override_num_blocks=num_blocks(len(paths), per_block))
