"""Collection: one module per source family, each `read(spec) -> Collected` (a Ray Dataset).

Every source yields the same columns so later stages need no special case:
`image` (uint8 array) or `image_bytes` (encoded file) or `text` (a table's own columns for
tables), `label` when the source carries one,
and `source_ref` (source URI + record index or file path) that traces a row to its origin.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.sources.base import Collected
from pipeline.spec import SourceSpec

_READERS: dict[str, str] = {
    "idx": "pipeline.sources.idx",
    "images": "pipeline.sources.images",
    "parquet": "pipeline.sources.tables",
    "csv": "pipeline.sources.tables",
    "jsonl": "pipeline.sources.tables",
    "sklearn": "pipeline.sources.bundled",
    "text": "pipeline.sources.text",
}


def read(spec: SourceSpec) -> Collected:
    """Open the source named by `spec.format` as a lazily executed Ray Dataset."""
    import importlib

    module = importlib.import_module(_READERS[spec.format])
    reader: Callable[[SourceSpec], Collected] = module.read
    return reader(spec)


__all__ = ["Collected", "read"]
