"""Arrow column helpers the stage's decisions share: rows taken from a chunked column without
joining its chunks, and reject reasons as an object array of shared strings."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def take_rows(column: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> pa.Array:
    """`column[rows]` as one array. `ChunkedArray.take` first joins every chunk into one array
    (a copy of the whole column per call: 80 MiB for a million short texts); this takes from
    each chunk the rows that fall in it, so only the result is allocated."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(column, pa.Array):
        return column.take(pa.array(rows))
    if column.num_chunks == 1:
        return column.chunk(0).take(pa.array(rows))
    if not len(rows):
        return pa.array([], column.type)
    ends = np.cumsum([len(chunk) for chunk in column.chunks])
    which = np.searchsorted(ends, rows, side="right")
    order = np.argsort(which, kind="stable")  # rows grouped by chunk, in their order within it
    starts = ends - np.array([len(chunk) for chunk in column.chunks])
    pieces, placed = [], []
    for chunk in np.unique(which):
        at = order[np.searchsorted(which[order], chunk):np.searchsorted(which[order], chunk, side="right")]
        pieces.append(column.chunk(int(chunk)).take(pa.array(rows[at] - starts[chunk])))
        placed.append(at)
    taken = pa.concat_arrays(pieces)
    placed = np.concatenate(placed)
    if np.array_equal(placed, np.arange(len(rows))):
        return taken
    inverse = np.empty(len(rows), dtype=np.int64)
    inverse[placed] = np.arange(len(rows))
    return taken.take(pa.array(inverse))


def keep_rows(column: pa.ChunkedArray, keep: np.ndarray) -> pa.Array:
    """A string column with the values of the rows where `keep` is True and nulls elsewhere,
    allocating only the kept values (`pyarrow.compute.if_else` copies every value)."""
    rows = np.flatnonzero(keep)
    kept = take_rows(column, rows).cast(pa.large_string())
    lengths = np.zeros(len(keep), dtype=np.int64)
    kept_offsets = np.frombuffer(kept.buffers()[1], dtype=np.int64)[kept.offset:kept.offset + len(kept) + 1]
    lengths[rows] = np.diff(kept_offsets)
    offsets = np.concatenate([[kept_offsets[0] if len(kept_offsets) else 0], kept_offsets[:1] + np.cumsum(lengths)])
    valid = np.zeros(len(keep), dtype=bool)
    valid[rows] = kept.is_valid().to_numpy(zero_copy_only=False)
    values = pa.LargeStringArray.from_buffers(len(keep), pa.py_buffer(offsets), kept.buffers()[2] or pa.py_buffer(b""),
                                              pa.array(valid).buffers()[1], int(len(keep) - valid.sum()))
    return values.cast(column.type)


def reason_array(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Reject reasons as the object array the dataset operators and the skeleton mark in
    place, decoded through a dictionary so that equal reasons share one Python string (a
    million kept rows are one "" and a million pointers, not a million objects)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        encoded = chunk if pa.types.is_dictionary(chunk.type) else chunk.dictionary_encode()
        values = np.array(encoded.dictionary.to_pylist() + [""], dtype=object)  # the last for nulls
        parts.append(values[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy()])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=object)

