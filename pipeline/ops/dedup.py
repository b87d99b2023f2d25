"""Exact deduplication by content hash (of the decoded, normalised pixels).

Within each group of identical records, the record with the smallest `source_ref` is kept
and the others are marked `dedup: duplicate of <kept source_ref>`, so the choice does not
depend on block order or cluster size.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray.data

from pipeline.ops.base import REJECT_REASON, DatasetOp, kept_rows
from pipeline.ops.registry import register


def _duplicates_in_group(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(group["source_ref"].astype(str), kind="stable")
    refs = group["source_ref"][order]
    return {"source_ref": refs[1:], "duplicate_of": np.full(len(refs) - 1, refs[0], dtype=object)}


def _mark_duplicates(table: pa.Table, duplicates: dict[str, str]) -> pa.Table:
    if not duplicates:
        return table
    reasons = table[REJECT_REASON].to_pylist()
    for i, ref in enumerate(table["source_ref"].to_pylist()):
        if ref in duplicates and not reasons[i]:
            reasons[i] = f"dedup: duplicate of {duplicates[ref]}"
    return table.set_column(table.column_names.index(REJECT_REASON), REJECT_REASON, pa.array(reasons, pa.string()))


@register
class ExactDedup(DatasetOp):
    name = "dedup"

    def mark(self, dataset: ray.data.Dataset) -> ray.data.Dataset:
        keys = kept_rows(dataset.select_columns(["content_hash", "source_ref", REJECT_REASON]))
        found = keys.groupby("content_hash").map_groups(_duplicates_in_group, batch_format="numpy")
        # Only the duplicates come to the driver (usually few): a narrow shuffle, not the images.
        duplicates = {row["source_ref"]: row["duplicate_of"] for row in found.iter_rows()}
        return dataset.map_batches(
            _mark_duplicates, fn_kwargs={"duplicates": duplicates}, batch_format="pyarrow"
        )
