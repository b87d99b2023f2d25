import numpy as np
import pytest
import ray.data

from pipeline import ops
from pipeline.ops.base import REJECT_REASON
from pipeline.ops.registry import build
from tests.conftest import png_bytes


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


def test_dedup_keeps_the_smallest_ref_of_each_group():
    rows = [{"content_hash": h, "source_ref": r, REJECT_REASON: reason}
            for h, r, reason in [("x", "f#2", ""), ("x", "f#1", ""), ("y", "f#3", ""), ("x", "f#0", "decode: bad"),
                                 ("y", "f#4", ""), ("z", "f#5", "")]]
    marked = build({"op": "dedup"}).mark(ray.data.from_items(rows, override_num_blocks=3))
    reasons = {r["source_ref"]: r[REJECT_REASON] for r in marked.take_all()}
    assert reasons == {"f#0": "decode: bad", "f#1": "", "f#2": "dedup: duplicate of f#1", "f#3": "",
                       "f#4": "dedup: duplicate of f#3", "f#5": ""}


def test_unknown_operator_lists_known_ones():
    with pytest.raises(ValueError, match="unknown operator 'blur'; known: color, decode, dedup, resize"):
        build({"op": "blur"})
