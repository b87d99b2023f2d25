"""A publisher for the crash tests: stages dataset version N (no Ray) and commits it to a target.

    python -m tests.publish_child TARGET VERSION [STORAGE_OPTIONS_JSON]

Version N has `10 + N` train rows and 3 test rows, spread over many small shards; every row's
`source_ref` is `vN#i`, so a reader can tell versions apart. It prints `committing` (flushed)
when the staging folder is complete and the commit begins.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import io, publish
from pipeline.commit import commit
from pipeline.modalities.image import image_schema

CLASSES = ["left", "right"]
ROWS_PER_SHARD = 2


def rows_of(version: int) -> dict[str, int]:
    return {"train": 10 + version, "test": 3}


def stage(target: io.Location, version: int, staging: io.Location) -> None:
    schema = image_schema(CLASSES)
    image = {"bytes": publish.encode_png(np.zeros((4, 4, 1), np.uint8)), "path": None}
    counts = rows_of(version)
    for split, count in counts.items():
        shards = -(-count // ROWS_PER_SHARD)
        staging.fs.makedirs(staging.join("data").path, exist_ok=True)
        for index in range(shards):
            refs = [f"v{version}#{i}" for i in range(index * ROWS_PER_SHARD, min(count, (index + 1) * ROWS_PER_SHARD))]
            table = pa.table({"image": [image] * len(refs), "label": [i % 2 for i in range(len(refs))],
                              "label_source": ["given"] * len(refs), "label_confidence": [None] * len(refs),
                              "origin": ["real"] * len(refs), "source_ref": refs, "generator": [None] * len(refs)},
                             schema=schema)
            with staging.fs.open(staging.join("data", f"{split}-{index:05d}-of-{shards:05d}.parquet").path, "wb") as fh:
                pq.write_table(table, fh)
    card = publish.Card(name="crash", class_names=CLASSES, split_rows=counts, synthetic_rows=0, schema=schema)
    with staging.fs.open(staging.join("README.md").path, "w") as handle:
        handle.write(publish.render_card(card))
    publish.write_json(staging.join("lineage.json"), {"version": version, "rows": counts})


def main() -> None:
    url, version = sys.argv[1], int(sys.argv[2])
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    target = io.resolve(url, options)
    staging = io.resolve(f"{url.rstrip('/')}.staging-v{version}", options)
    if staging.fs.exists(staging.path):
        staging.fs.rm(staging.path, recursive=True)
    stage(target, version, staging)
    print("committing", flush=True)
    commit(staging, target)
    print("done", flush=True)


if __name__ == "__main__":
    main()
