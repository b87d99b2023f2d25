"""Deduplication: exact (content hash of the decoded, normalised record) and near
(perceptual hash of an image within a Hamming distance).

Both decide on narrow per-row keys in source order (see `DatasetOp`). The record that
comes first in the source is kept and the others are marked `dedup: duplicate of <kept
source_ref>`, so the choice depends on neither block order nor cluster size.

Near duplicates are found by banding: the 64 hash bits are cut into `distance + 1`
bands, and two hashes within `distance` bits agree exactly on at least one band
(pigeonhole), so only rows that share a band value are compared.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline.columns import take_rows
from pipeline.ops.base import DatasetOp
from pipeline.ops.registry import register

HASH_SIDE = 32
"""pHash: images are reduced to 32×32 grey, and the 8×8 lowest DCT frequencies give 64 bits."""


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    matrix = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


def _resample_matrix(size: int, target: int) -> np.ndarray:
    """(target, size) weights resizing one axis: area averaging when shrinking, linear
    interpolation when growing."""
    weights = np.zeros((target, size))
    if size >= target:
        edges = np.arange(target + 1) * size / target
        for i in range(target):
            for j in range(int(edges[i]), int(np.ceil(edges[i + 1]))):
                weights[i, j] = min(edges[i + 1], j + 1) - max(edges[i], j)
    else:
        centres = np.clip((np.arange(target) + 0.5) * size / target - 0.5, 0, size - 1)
        low = np.floor(centres).astype(int)
        high = np.minimum(low + 1, size - 1)
        weights[np.arange(target), low] += 1 - (centres - low)
        weights[np.arange(target), high] += centres - low
    return weights / weights.sum(axis=1, keepdims=True)


_LOW_DCT = _dct_matrix(HASH_SIDE)[:8]


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """64-bit pHash of each uint8 (N, H, W, C) image: the image is resized to 32×32 grey and
    bit i is set when the i-th of the 8×8 lowest DCT coefficients exceeds their median (DC
    term excluded from the median). Resize and DCT are linear, so they fold into two small
    matrices applied to the whole batch at once."""
    grey = images.mean(axis=3) if images.shape[3] > 1 else images[:, :, :, 0].astype(np.float64)
    rows = _LOW_DCT @ _resample_matrix(images.shape[1], HASH_SIDE)
    cols = _LOW_DCT @ _resample_matrix(images.shape[2], HASH_SIDE)
    low = (rows @ grey @ cols.T).reshape(len(grey), 64)
    bits = low > np.median(low[:, 1:], axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b))


def _hash_words(column: pa.ChunkedArray) -> np.ndarray:
    """128-bit content hashes (16-byte binary, or 32 hex digits) as an (n, 2) uint64 array:
    16 bytes a row, where Python strings would take ~80."""
    if pa.types.is_string(column.type):
        column = pa.chunked_array([pa.array([bytes.fromhex(h) if h else bytes(16) for h in column.to_pylist()],
                                            pa.binary(16))])
    flat = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    words = np.frombuffer(flat.buffers()[1], dtype=np.uint64, count=2 * (flat.offset + len(flat)))
    return words[2 * flat.offset:].reshape(len(flat), 2)


@register
class ExactDedup(DatasetOp):
    """Reject records whose normalised content equals an earlier record's."""

    name = "dedup"
    kinds = ("image", "text")
    key_column = "content_hash"

    def decide(self, keys: pa.Table, reasons: np.ndarray) -> list[tuple[int, int, int]]:
        live = np.flatnonzero(reasons == "")
        hashes = _hash_words(keys["content_hash"])[live]
        _, first, inverse = np.unique(hashes, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        kept_of = live[first[inverse]]  # np.unique's first index is the earliest row of each group
        marked = live != kept_of
        rows, kept = live[marked], kept_of[marked]
        reasons[rows] = shared_reasons("dedup: duplicate of {}", keys["source_ref"], kept)
        return list(zip(kept.tolist(), rows.tolist(), [0] * len(rows)))


def shared_reasons(template: str, refs: pa.ChunkedArray, kept: np.ndarray) -> np.ndarray:
    """`template` filled with the source reference of each row in `kept`, as an object array
    in which the rows that name the same kept row share one string: a corpus with a million
    copies of a few thousand documents holds a few thousand reasons, not a million."""
    unique, inverse = np.unique(kept, return_inverse=True)
    texts = np.array([template.format(ref) for ref in take_rows(refs, unique).to_pylist()], dtype=object)
    return texts[inverse.ravel()] if len(kept) else np.zeros(0, dtype=object)


class NearDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    distance: int = Field(default=4, ge=0, le=16)
    """Largest Hamming distance between 64-bit perceptual hashes that counts as a duplicate."""


@register
class NearDedup(DatasetOp):
    """Reject images whose perceptual hash is within `distance` bits of an earlier kept image's."""

    name = "near_dedup"
    key_column = "phash"
    Params = NearDedupParams

    def pairs(self, hashes: np.ndarray) -> np.ndarray:
        """(i, j, distance) for every pair i < j within `distance` bits, sorted by (j, i)."""
        bands = self.params.distance + 1
        width = 64 // bands
        found = []
        for band in range(bands):
            shift = band * width
            bits = 64 - shift if band == bands - 1 else width
            values = (hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)
            order = np.argsort(values, kind="stable")
            sorted_values = values[order]
            starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
            ends = np.r_[starts[1:], len(order)]
            for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
                members = np.sort(order[start:end])
                i, j = np.triu_indices(len(members), k=1)
                distance = _hamming(hashes[members[i]], hashes[members[j]])
                close = distance <= self.params.distance
                found.append(np.stack([members[i][close], members[j][close], distance[close]], axis=1))
        if not found:
            return np.zeros((0, 3), dtype=np.int64)
        pairs = np.unique(np.concatenate(found).astype(np.int64), axis=0)
        return pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]

    def decide(self, keys: pa.Table, reasons: np.ndarray) -> list[tuple[int, int, int]]:
        live = np.flatnonzero(reasons == "")
        hashes = keys["phash"].to_numpy(zero_copy_only=False).astype(np.uint64)[live]
        refs = keys["source_ref"]
        found = []
        dropped = np.zeros(len(live), dtype=bool)
        # Pairs come sorted by their later row: when row j is decided, every earlier row's
        # fate is final, so j is dropped only for a neighbour that is itself kept.
        for i, j, distance in self.pairs(hashes):
            if dropped[j] or dropped[i]:
                continue
            dropped[j] = True
            kept, row = int(live[i]), int(live[j])
            reasons[row] = f"near_dedup: near duplicate of {refs[kept].as_py()} (distance {distance})"
            found.append((kept, row, int(distance)))
        return found
