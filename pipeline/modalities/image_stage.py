"""Collect + preprocess of images, materialised once: the image stage every later step reads.

One streaming pass over the source runs the fused row operators on each block, writes the
block to Parquet under `<run_root>/<name>/stages/<key>/` (pixels as raw uint8, so no image
is encoded twice: PNG happens once, at publish; an input PNG whose pixels no operator
changed is kept as is and published without encoding) and returns only the block's narrow keys
(source reference and its hash, content hash, perceptual hash, raw label, reject reason). Decisions
that need every row (dedup, labels, split) are then made on those keys.

Its key (`pipeline.stage.stage_key`) adds the row operators and the label column to what
every stage hashes. A stage is complete once its `stage.json` exists (written last).
"""

from __future__ import annotations

import hashlib
import io as pyio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from cluster.runtime import row_pass_compute, run_on_every_core
from pipeline import io, ops
from pipeline.console import CONSOLE, log
from pipeline.errors import SourceError
from pipeline.ops.base import REJECT_REASON
from pipeline.ops.dedup import perceptual_hashes
from pipeline.publish import encode_png, number_shards, write_shard
from pipeline.sources import Collected
from pipeline.spec import Spec
from pipeline.split import SPLIT_CODES, ref_hashes
from pipeline.stage import stage_key

@dataclass
class Stage:
    """A materialised stage: Parquet parts in source order and the keys of every row."""

    folder: io.Location
    key: str
    parts: list[dict[str, Any]]  # {"file": path, "rows": n}, in source order
    keys: pa.Table
    shape: ops.ImageShape
    resolved_ops: list[dict[str, Any]]
    reused: bool

    def split(self, codes: np.ndarray, labels: np.ndarray, split: str) -> ray.data.Dataset:
        """The rows whose code is `split`'s, as image arrays with their label ids and `source_ref`."""
        offsets = np.cumsum([0] + [p["rows"] for p in self.parts])[:-1]
        items = [{"file": p["file"], "offset": int(o)} for p, o in zip(self.parts, offsets)]
        return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
            _read_part, batch_size=1, batch_format="numpy",
            fn_kwargs={"folder": self.folder, "codes": codes, "labels": labels, "want": SPLIT_CODES[split],
                       "shape": (self.shape.height, self.shape.width, self.shape.channels)})

    def shard_groups(self, rows_per_shard: int) -> int:
        """How many tasks `publish` runs (each writes at most one shard per split)."""
        return max(1, -(-sum(p["rows"] for p in self.parts) // rows_per_shard))

    def publish(self, codes: np.ndarray, annotation, folder: io.Location, schema: pa.Schema,
                rows_per_shard: int, on_shard: Callable[[int, int], None] = lambda rows, size: None) -> dict[str, int]:
        """Write the curated rows of every split as HF shards `{split}-NNNNN-of-NNNNN.parquet`
        in one pass: each task reads `rows_per_shard` consecutive rows, encodes the kept
        images to PNG once and writes at most one shard per split; `on_shard(rows, bytes)`
        as each task's shards arrive. Returns rows per split."""
        groups: list[list[tuple[str, int, int, int]]] = [[]]  # (file, offset of the part, first row, end row)
        offset = room = 0
        for part in self.parts:
            start = 0
            while start < part["rows"]:
                if room == 0:
                    groups.append([])
                    room = rows_per_shard
                end = min(part["rows"], start + room)
                groups[-1].append((part["file"], offset, start, end))
                room -= end - start
                start = end
            offset += part["rows"]
        groups = [g for g in groups if g]
        folder.fs.makedirs(folder.path, exist_ok=True)
        items = [{"group": i, "parts": json.dumps(g)} for i, g in enumerate(groups)]
        written_shards = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _publish_group, batch_size=1, batch_format="numpy",
            fn_kwargs={"stage": self.folder, "out": folder, "codes": codes, "columns": _annotation_columns(annotation),
                       "schema": schema, "shape": (self.shape.height, self.shape.width, self.shape.channels)})
        written = []
        for shard in written_shards.iter_rows():
            written.append(shard)
            on_shard(int(shard["rows"]), int(shard["bytes"]))
        rows = {}
        for split in SPLIT_CODES:
            shards = [w for w in written if w["split"] == split]  # in group order
            number_shards(folder, split, [shard["file"] for shard in shards])
            rows[split] = sum(int(w["rows"]) for w in shards)
        return rows

    def pixels(self) -> np.ndarray:
        """Every row's pixels in source order (for the annotation models; rejected rows are zeros)."""
        shape = (self.shape.height, self.shape.width, self.shape.channels)
        parts = []
        for part in self.parts:
            with self.folder.fs.open(part["file"], "rb") as handle:
                parts.append(_pixels(pq.read_table(handle, columns=["image"]), shape))
        return np.concatenate(parts)

    def images(self, rows: list[int]) -> np.ndarray:
        """The pixels of the given rows (few: report examples), in the order asked."""
        offsets = np.cumsum([0] + [p["rows"] for p in self.parts])
        found = {}
        for index in sorted(set(np.searchsorted(offsets, rows, side="right") - 1)):
            wanted = [r for r in rows if offsets[index] <= r < offsets[index + 1]]
            with self.folder.fs.open(self.parts[index]["file"], "rb") as handle:
                pixels = _pixels(pq.read_table(handle, columns=["image"]),
                                 (self.shape.height, self.shape.width, self.shape.channels))
            for row in wanted:
                found[row] = pixels[row - int(offsets[index])]
        return np.stack([found[r] for r in rows])


def image_stage_key(spec: Spec, fingerprints: list[dict[str, Any]], code_version: dict[str, Any]) -> str:
    row_entries = [e for e in op_entries(spec) if isinstance(ops.build(e), ops.RowOp)]
    return stage_key(spec, fingerprints, code_version, row_ops=row_entries, keys=sorted(_key_columns(spec)),
                     label_column=spec.annotate.label_column)


def op_entries(spec: Spec) -> list[dict[str, Any]]:
    from pipeline.spec import DEFAULT_IMAGE_OPS

    return spec.preprocess.ops if spec.preprocess.ops is not None else [{"op": name} for name in DEFAULT_IMAGE_OPS]


def _key_columns(spec: Spec) -> set[str]:
    return {ops.build(e).key_column for e in op_entries(spec) if isinstance(ops.build(e), ops.DatasetOp)}


def build_stage(spec: Spec, collected: Collected, folder: io.Location, key: str) -> Stage:
    """Reuse the stage at `folder` when complete, else run the row pass and write it."""
    manifest = folder.join("stage.json")
    if folder.fs.exists(manifest.path):
        with folder.fs.open(manifest.path) as handle:
            saved = json.load(handle)
        with folder.fs.open(folder.join("keys.parquet").path, "rb") as handle:
            keys = pq.read_table(handle)
        log("preprocess", f"reusing the stage {folder.url} ({keys.num_rows} rows, written {saved['written']}); "
            "--fresh recomputes it")
        return Stage(folder, key, saved["parts"], keys, ops.ImageShape(*saved["shape"]), saved["resolved_ops"], True)
    if folder.fs.exists(folder.path):
        folder.fs.rm(folder.path, recursive=True)  # an interrupted earlier pass
    folder.fs.makedirs(folder.path, exist_ok=True)

    row_ops, _ = ops.split_ops(op_entries(spec))
    first, columns = _peek(collected, row_ops[0], spec.source.path or spec.source.format)
    if spec.annotate.label_column not in columns:
        raise SourceError(f"annotate.label_column: no column '{spec.annotate.label_column}' in the source "
                          f"(columns: {', '.join(c for c in columns if c != 'image_bytes')})")
    shape = ops.resolve_auto(row_ops, first)
    fused = ops.FusedRowOps(row_ops, shape)
    blocks = run_on_every_core(collected.dataset.map_batches(
        _stage_block, batch_size=None, batch_format="numpy", compute=row_pass_compute(),
        fn_kwargs={"fused": fused, "folder": folder, "label_column": spec.annotate.label_column,
                   "perceptual": "phash" in _key_columns(spec)}))
    parts, tables = [], []
    progress = CONSOLE.progress("preprocess", collected.rows, "rows")
    rejected = 0
    for block in blocks.iter_rows():  # one small row per block, in order; parsed as it arrives
        if int(block["rows"]):
            parts.append({"file": str(block["file"]), "rows": int(block["rows"])})
            tables.append(pa.ipc.open_stream(block["keys"]).read_all())
            rejected += int(pc.sum(pc.not_equal(tables[-1][REJECT_REASON], "")).as_py() or 0)
            progress.update(progress.done + int(block["rows"]), rejected=f"{rejected:,}")
    keys = pa.concat_tables(tables, promote_options="permissive")
    progress.close(f"{keys.num_rows:,} rows staged, {rejected:,} rejected by the row operators")
    with folder.fs.open(folder.join("keys.parquet").path, "wb") as handle:
        pq.write_table(keys, handle)
    resolved_ops = [{"op": op.name, **op.params.model_dump()} for op in row_ops]
    saved = {"key": key, "parts": parts, "shape": [shape.height, shape.width, shape.channels],
             "resolved_ops": resolved_ops, "rows": keys.num_rows, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    with folder.fs.open(manifest.path, "w") as handle:
        json.dump(saved, handle, indent=2)
    return Stage(folder, key, parts, keys, shape, resolved_ops, False)


def _peek(collected: Collected, decode: ops.RowOp, source: str) -> tuple[np.ndarray, list[str]]:
    """The first decodable image of the source's first 64 rows, and the rows' columns."""
    rows = collected.preview if collected.preview is not None else collected.dataset.take(64)
    if not rows:
        raise SourceError(f"{source}: the source is empty")
    column = "image_bytes" if "image_bytes" in rows[0] else "image" if "image" in rows[0] else None
    if column is None:
        raise SourceError(f"{source}: no image column (columns: {', '.join(rows[0])}); set source.image_column")
    first = ops.first_decodable([row[column] for row in rows], decode)
    if first is None:
        raise SourceError(f"{source}: none of the first {len(rows)} records decodes as an image")
    return first, list(rows[0])


def _stage_block(batch: dict[str, np.ndarray], fused: ops.FusedRowOps, folder: io.Location, label_column: str,
                 perceptual: bool) -> dict[str, np.ndarray]:
    labels = batch.get(label_column)
    out = fused(batch)
    count = len(out["source_ref"])
    if count == 0:
        return {"file": np.array([""], dtype=object), "rows": np.array([0]), "keys": np.array([b""], dtype=object)}
    images = np.ascontiguousarray(out["image"])
    width = int(np.prod(images.shape[1:]))
    pixels = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), count, [None, pa.py_buffer(images.tobytes())])
    refs = pa.array(list(out["source_ref"]), pa.string())
    name = f"part-{hashlib.blake2b(str(out['source_ref'][0]).encode(), digest_size=8).hexdigest()}.parquet"
    path = folder.join(name).path
    with folder.fs.open(path, "wb") as handle:
        pq.write_table(pa.table({"image": pixels, "source_ref": refs,
                                 "png": pa.array([png or None for png in out["png"]], pa.binary())}),
                       handle, compression="lz4")
    keys = {"source_ref": refs, "ref_hash": pa.array(ref_hashes(out["source_ref"]), pa.uint64()),
            "content_hash": pa.array([bytes.fromhex(h) if h else bytes(16) for h in out["content_hash"]], pa.binary(16)),
            "label": pa.array([None] * count if labels is None else list(labels)),
            REJECT_REASON: pa.array(list(out[REJECT_REASON]), pa.string())}
    if perceptual:
        keys["phash"] = pa.array(perceptual_hashes(images), pa.uint64())
    sink = pyio.BytesIO()
    table = pa.table(keys)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return {"file": np.array([path], dtype=object), "rows": np.array([count]),
            "keys": np.array([sink.getvalue()], dtype=object)}


def _pixels(table: pa.Table, shape: tuple[int, int, int]) -> np.ndarray:
    column = table["image"].combine_chunks()
    width = int(np.prod(shape))
    flat = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=(column.offset + len(column)) * width)
    return flat[column.offset * width:].reshape(len(column), *shape)


def _annotation_columns(annotation) -> dict[str, np.ndarray]:
    """Per-row label columns to publish (label_source as codes into SOURCES: 1 byte a row)."""
    from pipeline.annotate import SOURCES

    columns = {"label": annotation.label, "label_confidence": annotation.confidence,
               "label_source": np.array([SOURCES.index(s) if s else -1 for s in annotation.source], dtype=np.int8)}
    if annotation.issue is not None:
        columns.update(label_issue=annotation.issue, suggested_label=annotation.suggested)
    return columns


def _publish_group(batch: dict[str, np.ndarray], stage: io.Location, out: io.Location, codes: np.ndarray,
                   columns: dict[str, np.ndarray], schema: pa.Schema,
                   shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    from pipeline.annotate import SOURCES

    tables: dict[str, list[pa.Table]] = {split: [] for split in SPLIT_CODES}
    for path, offset, start, end in json.loads(str(batch["parts"][0])):
        with stage.fs.open(path, "rb") as handle:
            part = pq.read_table(handle)
        images = _pixels(part, shape)
        for split, code in SPLIT_CODES.items():
            rows = start + np.flatnonzero(codes[offset + start:offset + end] == code)
            count = len(rows)
            kept = part["png"].to_pylist()  # the input's own PNG where its pixels are unchanged
            pngs = pa.array([kept[i] or encode_png(images[i]) for i in rows], pa.binary())
            at = offset + rows
            values = {name: pa.array(columns[name][at], schema.field(name).type)
                      for name in ("label", "label_confidence", "label_issue", "suggested_label")
                      if name in columns and name in schema.names}
            tables[split].append(pa.table({
                "image": pa.StructArray.from_arrays([pngs, pa.nulls(count, pa.string())], names=["bytes", "path"]),
                **values, "label_source": pa.array([SOURCES[c] for c in columns["label_source"][at]], pa.string()),
                "origin": pa.array(["real"] * count, pa.string()),
                "source_ref": part["source_ref"].take(pa.array(rows, pa.int64())),
                "generator": pa.nulls(count, pa.string())}).select(schema.names).cast(schema))
    files, counts, splits, sizes = [], [], [], []
    group = int(batch["group"][0])
    for split, parts in tables.items():
        table = pa.concat_tables(parts)
        if not table.num_rows:
            continue
        path, size = write_shard(table, out, f"part-{split}-{group:06d}.parquet")
        files.append(path)
        sizes.append(size)
        counts.append(table.num_rows)
        splits.append(split)
    return {"split": np.array(splits, dtype=object), "file": np.array(files, dtype=object),
            "rows": np.array(counts, dtype=np.int64), "bytes": np.array(sizes, dtype=np.int64)}


def _read_part(batch: dict[str, np.ndarray], folder: io.Location, codes: np.ndarray, labels: np.ndarray,
               want: int, shape: tuple[int, int, int]) -> Iterator[dict[str, np.ndarray]]:
    path, offset = str(batch["file"][0]), int(batch["offset"][0])
    with folder.fs.open(path, "rb") as handle:
        table = pq.read_table(handle, columns=["image", "source_ref"])
    rows = np.flatnonzero(codes[offset:offset + table.num_rows] == want)
    if len(rows):  # nothing for a part without rows of this split: Ray cannot type an empty tensor batch
        yield {"image": _pixels(table, shape)[rows], "label": labels[offset + rows].astype(np.int64),
               "source_ref": np.array(table["source_ref"].take(pa.array(rows, pa.int64())).to_pylist(), dtype=object)}
