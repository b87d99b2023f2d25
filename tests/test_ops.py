import gzip
import io

import numpy as np
import pyarrow as pa
import pytest

from pipeline import ops
from pipeline.ops.base import REJECT_REASON
from pipeline.ops.dedup import perceptual_hashes
from pipeline.ops.registry import build
from PIL import Image

from tests.conftest import MNIST_IMAGES, needs_shared, png_bytes


def _decode():
    return build({"op": "decode"})


def test_decode_rejects_corrupt_records_with_a_reason():
    good = png_bytes(np.full((5, 7), 200, np.uint8))
    values = [good, good[:40], b"", b"not an image", np.zeros((3, 3), np.float32)]
    reasons = [""] * len(values)
    _decode().run(values, reasons)
    assert reasons[0] == "" and values[0].shape == (5, 7, 1)
    assert reasons[1].startswith("decode: undecodable image")
    assert reasons[2] == "decode: empty file"
    assert reasons[3].startswith("decode: undecodable image (UnidentifiedImageError")
    assert reasons[4].startswith("decode: not an image array (dtype float32")


def test_decode_normalises_modes():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    assert _decode().apply(png_bytes(rgba)).shape == (4, 4, 3)
    assert _decode().apply(png_bytes(np.zeros((4, 4, 3), np.uint8), "JPEG")).shape == (4, 4, 3)


def test_color_and_resize():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, :10] = (255, 0, 0)
    grey = build({"op": "color", "mode": "L"}).apply(rgb)
    assert grey.shape == (10, 20, 1) and grey[0, 0, 0] == 76  # ITU-R 601 luma of pure red
    assert build({"op": "color", "mode": "RGB"}).apply(grey).shape == (10, 20, 3)
    cropped = build({"op": "resize", "size": 8}).apply(grey)
    assert cropped.shape == (8, 8, 1)
    assert build({"op": "resize", "size": 8, "fit": "stretch"}).apply(grey).shape == (8, 8, 1)


def test_auto_parameters_resolve_from_the_first_record():
    row_ops, dataset_ops = ops.split_ops([{"op": "color", "mode": "auto"}, {"op": "resize", "size": "auto"}, {"op": "dedup"}])
    assert [op.name for op in row_ops] == ["decode", "color", "resize"] and [op.name for op in dataset_ops] == ["dedup"]
    shape = ops.resolve_auto(row_ops, np.zeros((30, 31, 1), np.uint8))
    assert shape == ops.ImageShape(28, 28, 1)
    assert row_ops[1].params.mode == "L" and row_ops[2].params.size == 28


def test_fused_ops_mark_rejects_and_keep_shape():
    row_ops, _ = ops.split_ops([{"op": "color", "mode": "L"}, {"op": "resize", "size": 8}])
    fused = ops.FusedRowOps(row_ops, ops.ImageShape(8, 8, 1))
    batch = {"image_bytes": np.array([png_bytes(np.full((8, 8), 9, np.uint8)), b"\x89PNG broken"], dtype=object),
             "source_ref": np.array(["a", "b"], dtype=object)}
    out = fused(batch)
    assert out["image"].shape == (2, 8, 8, 1)
    assert out[REJECT_REASON][0] == "" and out[REJECT_REASON][1].startswith("decode: undecodable")
    assert len(out["content_hash"][0]) == 32 and out["content_hash"][1] == ""


def _keys(**columns) -> tuple[pa.Table, np.ndarray]:
    refs = [f"f#{i}" for i in range(len(next(iter(columns.values()))))]
    reasons = np.array(columns.pop("reasons", [""] * len(refs)), dtype=object)
    return pa.table({"source_ref": refs, **columns}), reasons


def test_dedup_keeps_the_first_row_of_each_group():
    x, y, z = "ab" * 16, "cd" * 16, "ef" * 16  # hex digests
    keys, reasons = _keys(content_hash=[x, x, y, x, y, z],
                          reasons=["decode: bad", "", "", "", "", ""])
    pairs = build({"op": "dedup"}).decide(keys, reasons)
    assert list(reasons) == ["decode: bad", "", "", "dedup: duplicate of f#1", "dedup: duplicate of f#2", ""]
    assert pairs == [(1, 3, 0), (2, 4, 0)]


@needs_shared
def test_perceptual_hash_is_stable_under_small_changes_and_separates_different_images():
    with gzip.open(MNIST_IMAGES) as handle:
        digits = np.frombuffer(handle.read()[16:16 + 500 * 784], np.uint8).reshape(500, 28, 28, 1)
    hashes = perceptual_hashes(digits)

    def distances(changed: np.ndarray) -> np.ndarray:
        return np.bitwise_count(hashes ^ perceptual_hashes(changed))

    jpeg = np.stack([np.asarray(Image.open(io.BytesIO(png_bytes(d[:, :, 0], "JPEG"))))[:, :, None] for d in digits])
    brighter = np.clip(digits.astype(int) + 15, 0, 255).astype(np.uint8)
    larger = np.stack([np.asarray(Image.fromarray(d[:, :, 0]).resize((112, 112)))[:, :, None] for d in digits])
    assert np.percentile(distances(jpeg), 90) <= 2 and np.percentile(distances(brighter), 99) <= 4
    assert np.percentile(distances(larger), 90) <= 2  # the hash does not depend on the resolution
    others = np.bitwise_count(hashes ^ np.roll(hashes, 1))
    assert np.median(others) >= 20 and np.percentile(others, 1) > 4  # different digits are far apart


def test_near_dedup_finds_every_pair_within_the_distance_and_keeps_the_first():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=400, dtype=np.uint64)
    flips = [(10, 3, 1), (50, 4, 2), (399, 5, 3), (20, 6, 5)]  # (copy into row, from row, bits flipped)
    for row, source, bits in flips:
        hashes[row] = hashes[source] ^ np.uint64((1 << bits) - 1)
    keys, reasons = _keys(phash=pa.array(hashes, pa.uint64()))
    op = build({"op": "near_dedup", "distance": 4})
    brute = {(i, j) for i in range(400) for j in range(i + 1, 400) if np.bitwise_count(hashes[i] ^ hashes[j]) <= 4}
    assert {(int(i), int(j)) for i, j, _ in op.pairs(hashes)} == brute == {(3, 10), (4, 50), (5, 399)}
    pairs = op.decide(keys, reasons)
    assert pairs == [(3, 10, 1), (4, 50, 2), (5, 399, 3)]
    assert reasons[10] == "near_dedup: near duplicate of f#3 (distance 1)" and reasons[20] == ""


def test_near_dedup_keeps_a_row_whose_only_neighbour_was_dropped():
    base = np.uint64(0)
    hashes = np.array([base, base ^ np.uint64(0b111), base ^ np.uint64(0b111111)], dtype=np.uint64)
    keys, reasons = _keys(phash=pa.array(hashes, pa.uint64()))
    build({"op": "near_dedup", "distance": 3}).decide(keys, reasons)
    # row 1 is within 3 bits of row 0 (dropped); row 2 is 3 bits from row 1 but 6 from row 0: kept
    assert list(reasons) == ["", "near_dedup: near duplicate of f#0 (distance 3)", ""]


def test_unknown_operator_lists_known_ones():
    with pytest.raises(ValueError, match="unknown operator 'blur'; known: color, decode, dedup, near_dedup, resize"):
        build({"op": "blur"})
