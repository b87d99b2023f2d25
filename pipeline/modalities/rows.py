"""Rows of a table of values (a table's columns, a text and its label): the labelled,
published form every such modality writes, and the synthetic counts per class."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import io
from pipeline.publish import shard_name, write_shard


def write_rows(table: pa.Table, folder: io.Location, split: str, schema: pa.Schema, rows_per_shard: int) -> int:
    """Write `table` (in `schema`'s columns; missing ones are null) as
    `{split}-NNNNN-of-NNNNN.parquet` shards; return its rows."""
    if table.num_rows == 0:
        return 0
    folder.fs.makedirs(folder.path, exist_ok=True)
    for item in schema:  # e.g. label_confidence of generated rows
        if item.name not in table.column_names:
            table = table.append_column(item.name, pa.nulls(table.num_rows, item.type))
    table = table.select(schema.names)
    shards = max(1, math.ceil(table.num_rows / rows_per_shard))
    for index in range(shards):
        write_shard(table.slice(index * rows_per_shard, rows_per_shard).cast(schema), folder,
                    shard_name(split, index, shards), row_group_size=10_000)
    return table.num_rows


def with_annotation(table: pa.Table, annotation, target: str) -> pa.Table:
    """The target column set to each row's final label (given, rule, model or human), plus
    the label provenance columns."""
    names = annotation.class_names
    table = table.set_column(table.column_names.index(target), target,
                             pa.array([names[i] if i >= 0 else None for i in annotation.label], pa.string()))
    table = table.append_column("label_source", pa.array([s or None for s in annotation.source], pa.string()))
    table = table.append_column("label_confidence", pa.array(annotation.confidence, pa.float32()))
    if annotation.issue is not None:
        table = table.append_column("label_issue", pa.array(annotation.issue)).append_column(
            "suggested_label", pa.array(annotation.suggested, pa.int64()))
    return table


def published_rows(table: pa.Table, target: str, class_names: list[str], origin: str, generator: str | None) -> pa.Table:
    """The rows as published: the target as class ids, then `origin`, `generator` and `source_ref`."""
    index = {n: i for i, n in enumerate(class_names)}
    ids = pa.array([index[str(v)] for v in table[target].to_pylist()], pa.int64())
    table = table.set_column(table.column_names.index(target), target, ids)
    n = table.num_rows
    refs = table["source_ref"] if "source_ref" in table.column_names else pa.nulls(n, pa.string())
    table = table.drop_columns([c for c in ("source_ref",) if c in table.column_names])
    if "label_source" not in table.column_names:  # generated rows: labelled by their condition
        table = table.append_column("label_source", pa.array(["conditioned"] * n, pa.string()))
    return table.append_column("origin", pa.array([origin] * n, pa.string())).append_column(
        "generator", pa.array([generator] * n, pa.string())).append_column("source_ref", refs)


def class_shares(values: list[Any], total: int) -> list[tuple[str, int]]:
    """(value, rows) for `total` rows in the shares `values` have, exactly `total` in all
    (largest remainders), in sorted value order; values that get no row are left out."""
    names, counts = np.unique(np.array([str(v) for v in values]), return_counts=True)
    shares = counts / counts.sum() * total
    rows = np.floor(shares).astype(int)
    rows[np.argsort(-(shares - rows))[:total - rows.sum()]] += 1
    return [(str(v), int(n)) for v, n in zip(names, rows) if n]
