"""IDX files (the MNIST family): an images file and a labels file, gzip or raw.

The driver reads only the two headers (to check magic numbers and counts); records are
read in parallel by range, each task seeking to its own slice of the file.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import ray.data

from pipeline import io
from pipeline.errors import SourceError
from pipeline.sources.base import Collected, num_blocks
from pipeline.spec import SourceSpec

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"


def _open(loc: io.Location):
    raw = loc.fs.open(loc.path, "rb")
    if raw.read(2) == _GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb")
    raw.seek(0)
    return raw


def read_header(loc: io.Location, magic: int, dims: int) -> tuple[int, ...]:
    """Read `(count, *shape)` from an IDX header, checking its magic number."""
    size = 4 * (1 + dims)
    try:
        with _open(loc) as handle:
            header = handle.read(size)
    except (OSError, EOFError, zlib.error) as err:
        raise SourceError(f"{loc.url}: cannot read IDX header: {err}") from None
    if len(header) < size:
        raise SourceError(f"{loc.url}: file too short for an IDX header ({len(header)} bytes)")
    found, *shape = struct.unpack(f">{1 + dims}I", header)
    if found != magic:
        raise SourceError(f"{loc.url}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    return tuple(shape)


def _read_range(
    batch: dict[str, np.ndarray], images: io.Location, labels: io.Location, shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Read the records whose ids arrive in `batch` (one contiguous range) from both files."""
    ids = batch["id"]
    start, count = int(ids[0]), len(ids)
    pixels = shape[0] * shape[1]
    try:
        with _open(images) as handle:
            handle.seek(16 + start * pixels)
            data = handle.read(count * pixels)
        with _open(labels) as handle:
            handle.seek(8 + start)
            label_bytes = handle.read(count)
    except (EOFError, OSError, zlib.error) as err:  # a gzip stream cut short or corrupt
        raise SourceError(f"{images.url}: truncated or corrupt IDX file (records {start}-{start + count}): "
                          f"{str(err).splitlines()[0] or type(err).__name__}") from None
    if len(data) != count * pixels or len(label_bytes) != count:
        raise SourceError(f"{images.url}: truncated IDX file at record {start + len(data) // pixels}")
    return {
        "image": np.frombuffer(data, dtype=np.uint8).reshape(count, *shape),
        "label": np.frombuffer(label_bytes, dtype=np.uint8).astype(np.int64),
        "source_ref": np.array([f"{images.ref(images.path)}#{i}" for i in ids], dtype=object),
    }


def read(spec: SourceSpec) -> Collected:
    images = io.require_exists(spec.path, "IDX images file", spec.storage_options)
    labels = io.require_exists(spec.labels, "IDX labels file", spec.storage_options)
    count, rows, cols = read_header(images, IMAGES_MAGIC, 3)
    (label_count,) = read_header(labels, LABELS_MAGIC, 1)
    if label_count != count:
        raise SourceError(
            f"{labels.url}: label count {label_count} differs from image count {count} in {images.url}"
        )
    if spec.limit:
        count = min(count, spec.limit)
    dataset = ray.data.range(count, override_num_blocks=num_blocks(count)).map_batches(
        _read_range, fn_kwargs={"images": images, "labels": labels, "shape": (rows, cols)}, batch_size=None
    )
    return Collected(
        dataset=dataset,
        fingerprints=[io.fingerprint(images, io.list_files(images)), io.fingerprint(labels, io.list_files(labels))],
        rows=count,
    )
