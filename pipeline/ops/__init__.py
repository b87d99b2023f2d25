"""Preprocessing operators and the fused per-batch pipeline built from a spec's `ops` list.

Row operators run fused in one `map_batches` call (one pass over the data, one task per
block); dataset operators (dedup) then decide on the narrow keys that pass returns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.ops import dedup, image, text  # noqa: F401  (registers the operators)
from pipeline.ops.base import REJECT_REASON, DatasetOp, Reject, RowOp
from pipeline.ops.registry import OPERATORS, build


@dataclass(frozen=True)
class ImageShape:
    height: int
    width: int
    channels: int


class FusedRowOps:
    """All row operators of a spec applied to one batch, in order.

    Input: `image` (arrays) or `image_bytes` (encoded), optionally `reject_reason` (a source
    that could not read a record), plus any other columns, which pass through. Output adds
    `reject_reason`, `content_hash` and `png`: the record's own bytes when they are an 8-bit
    grey or RGB PNG whose pixels no operator changed (publish reuses them instead of
    encoding the same pixels again), else empty. Every image has `shape` (rejected rows
    carry zeros, so the column stays one fixed-shape tensor).
    """

    def __init__(self, ops: list[RowOp], shape: ImageShape):
        self.ops, self.shape = ops, shape

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = list(batch.pop("image_bytes")) if "image_bytes" in batch else list(batch.pop("image"))
        reasons = list(batch.pop(REJECT_REASON)) if REJECT_REASON in batch else [""] * len(values)
        sources = [v if _plain_png(v) else None for v in values]
        self.ops[0].run(values, reasons)  # decode
        decoded = list(values)
        for op in self.ops[1:]:
            op.run(values, reasons)
        pngs = [source if source is not None and value is first else b""
                for source, value, first in zip(sources, values, decoded)]
        target = (self.shape.height, self.shape.width, self.shape.channels)
        images = np.zeros((len(values), *target), dtype=np.uint8)
        hashes = [""] * len(values)
        for i, value in enumerate(values):
            if reasons[i]:
                continue
            if value.shape != target:
                reasons[i] = f"shape: differs from the dataset's {target} ({value.shape})"
                continue
            images[i] = value
            hashes[i] = hashlib.blake2b(value.tobytes(), digest_size=16).hexdigest()
        return {
            **batch,
            "image": images,
            "content_hash": np.array(hashes, dtype=object),
            REJECT_REASON: np.array(reasons, dtype=object),
            "png": np.array([png if not reason else b"" for png, reason in zip(pngs, reasons)], dtype=object),
        }


def _plain_png(value) -> bool:
    """An 8-bit, non-interlaced grey or RGB PNG: it decodes to exactly the array it stores."""
    return (isinstance(value, bytes) and value[:8] == b"\x89PNG\r\n\x1a\n" and value[12:16] == b"IHDR"
            and len(value) > 28 and value[24] == 8 and value[25] in (0, 2) and value[28] == 0)


def split_ops(entries: list[dict[str, Any]]) -> tuple[list[RowOp], list[DatasetOp]]:
    """Build operators from spec entries; decode always runs first."""
    if not entries or entries[0]["op"] != "decode":
        entries = [{"op": "decode"}, *[e for e in entries if e["op"] != "decode"]]
    ops = [build(entry) for entry in entries]
    return [op for op in ops if isinstance(op, RowOp)], [op for op in ops if isinstance(op, DatasetOp)]


def resolve_auto(row_ops: list[RowOp], first: np.ndarray) -> ImageShape:
    """Fix `auto` parameters from the first decodable record; return the output shape."""
    for op in row_ops:
        if op.name == "color" and op.params.mode == "auto":
            op.params.mode = "L" if first.shape[2] == 1 else "RGB"
        if op.name == "resize" and op.params.size == "auto":
            op.params.size = max(4, min(first.shape[:2]) // 4 * 4)
    value = first
    for op in row_ops[1:]:
        value = op.apply(value)
    return ImageShape(*value.shape)


def first_decodable(values: list[Any], decode: RowOp) -> np.ndarray | None:
    for value in values:
        try:
            return decode.apply(value)
        except Reject:
            continue
    return None


__all__ = [
    "OPERATORS", "REJECT_REASON", "DatasetOp", "FusedRowOps", "ImageShape", "RowOp",
    "first_decodable", "resolve_auto", "split_ops",
]
