"""The Arrow column helpers against pyarrow's own functions."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.columns import keep_rows, reason_array, take_rows


def _chunked(rng: np.random.Generator, rows: int) -> pa.ChunkedArray:
    values = [None if rng.random() < 0.1 else "x" * int(rng.integers(0, 9)) + str(i) for i in range(rows)]
    cuts = np.sort(rng.choice(np.arange(1, rows), size=4, replace=False))
    return pa.chunked_array([pa.array(part, pa.string()) for part in np.split(np.array(values, dtype=object), cuts)])


def test_take_rows_equals_take_in_any_order_without_joining_the_chunks():
    rng = np.random.default_rng(0)
    column = _chunked(rng, 200)
    for rows in (np.arange(200), np.sort(rng.choice(200, 50)), rng.choice(200, 80), np.array([], dtype=np.int64), [199]):
        assert take_rows(column, np.asarray(rows)).to_pylist() == column.take(pa.array(np.asarray(rows, np.int64))).to_pylist()
    large = pa.chunked_array([pa.array(["y" * 100] * 10_000) for _ in range(8)])
    before = pa.total_allocated_bytes()
    pool = pa.default_memory_pool()
    peak_before = pool.max_memory()
    taken = take_rows(large, np.arange(0, 80_000, 100))
    assert len(taken) == 800 and pa.total_allocated_bytes() - before < 1 << 20
    assert pool.max_memory() - peak_before < 1 << 20  # no copy of the 8 MB column on the way


def test_keep_rows_equals_if_else_and_keeps_nulls():
    rng = np.random.default_rng(1)
    column = _chunked(rng, 300)
    for keep in (rng.random(300) < 0.3, np.zeros(300, bool), np.ones(300, bool)):
        kept = keep_rows(column, keep)
        kept.validate(full=True)
        assert kept.type == pa.string()
        assert kept.to_pylist() == pc.if_else(pa.array(keep), column, pa.scalar(None, pa.string())).to_pylist()


def test_reason_array_decodes_nulls_as_kept_and_shares_equal_strings():
    column = pa.chunked_array([pa.array(["", "dedup: duplicate of a#1", None]), pa.array(["dedup: duplicate of a#1"] * 3)])
    reasons = reason_array(column)
    assert reasons.dtype == object and list(reasons) == ["", "dedup: duplicate of a#1", ""] + ["dedup: duplicate of a#1"] * 3
    assert reasons[3] is reasons[4] is reasons[5]
    assert len(reason_array(pa.chunked_array([], pa.string()))) == 0
