"""Publishing a table run: typed Parquet shards and a dataset card.

Numbers stay numbers, categories are strings, datetimes are timestamps, and the target is
a `ClassLabel`. Every row has `origin` (`real`/`synthetic`) and `generator`; real rows keep
`source_ref`. The features go in each shard's `huggingface` schema metadata and in the card.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline import io as dkio
from pipeline.publish import annotation_fields, annotation_lines, annotations_creators, features_yaml

PROVENANCE = ("origin", "generator", "source_ref")
LABEL_COLUMNS = ("label_source", "label_confidence", "label_issue", "suggested_label")
READING_GUIDE_TABLE = [
    "How to read these numbers. **Fidelity**: `column_shapes` (1 − KS distance for numbers, 1 − total",
    "variation for categories) and `column_pair_trends` (correlation and contingency similarity) are",
    "in [0, 1], higher is better; `quality_score` is their mean. `detection_auc` near 0.5 means a",
    "classifier cannot tell synthetic rows from real ones. **Utility**: a fixed gradient-boosting",
    "recipe trained on synthetic rows (TSTR) or real rows (TRTR), tested on the real test split.",
    "**Privacy**: `dcr_median_synthetic` well below `dcr_median_holdout`, or `exact_copies` above 0,",
    "means the generator reproduces training rows.",
]


def _feature(arrow_type: pa.DataType) -> dict[str, Any]:
    if pa.types.is_timestamp(arrow_type):
        return {"dtype": f"timestamp[{arrow_type.unit}]", "_type": "Value"}
    return {"dtype": "string" if pa.types.is_string(arrow_type) else str(arrow_type), "_type": "Value"}


def table_schema(types: dict[str, pa.DataType], target: str, class_names: list[str],
                 label_quality: bool = False) -> pa.Schema:
    """Arrow schema of a published shard (columns in source order, label provenance, then
    row provenance)."""
    fields, features = [], {}
    for name, arrow_type in types.items():
        if name == target:
            fields.append((name, pa.int64()))
            features[name] = {"names": list(class_names), "_type": "ClassLabel"}
        else:
            fields.append((name, arrow_type))
            features[name] = _feature(arrow_type)
    for name, arrow_type, feature in annotation_fields(class_names, label_quality):
        fields.append((name, arrow_type))
        features[name] = feature
    for name in PROVENANCE:
        fields.append((name, pa.string()))
        features[name] = {"dtype": "string", "_type": "Value"}
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


def write_table_split(table: pa.Table, folder: dkio.Location, split: str, schema: pa.Schema, rows_per_shard: int) -> int:
    """Write `table` (already in `schema`'s columns) as `{split}-NNNNN-of-NNNNN.parquet` shards."""
    if table.num_rows == 0:
        return 0
    folder.fs.makedirs(folder.path, exist_ok=True)
    for item in schema:  # e.g. label_confidence of generated rows
        if item.name not in table.column_names:
            table = table.append_column(item.name, pa.nulls(table.num_rows, item.type))
    table = table.select(schema.names)
    shards = max(1, math.ceil(table.num_rows / rows_per_shard))
    for index in range(shards):
        part = table.slice(index * rows_per_shard, rows_per_shard).cast(schema)
        with folder.fs.open(folder.join(f"{split}-{index:05d}-of-{shards:05d}.parquet").path, "wb") as handle:
            pq.write_table(part, handle, row_group_size=10_000)
    return table.num_rows


def render_table_card(name: str, schema: pa.Schema, target: str, class_names: list[str], split_rows: dict[str, int],
                      synthetic_rows: int, rejected_by_reason: dict[str, int], metrics: dict[str, Any],
                      annotation: dict[str, Any], lineage_summary: dict[str, Any]) -> str:
    features = features_yaml(schema)
    configs = [{"config_name": "default", "data_files": [
        {"split": s, "path": f"data/{s}-*.parquet"} for s, n in split_rows.items() if n]}]
    infos = [{"config_name": "default", "features": features}]
    if synthetic_rows:
        configs.append({"config_name": "synthetic", "data_files": [{"split": "train", "path": "synthetic/train-*.parquet"}]})
        infos.append({"config_name": "synthetic", "features": features})
    header = yaml.safe_dump({"configs": configs, "dataset_info": infos, "task_categories": ["tabular-classification"],
                             "annotations_creators": annotations_creators(annotation),
                             "tags": ["datakiln", "synthetic", "tabular"]}, sort_keys=False)
    lines = [
        "---", header.rstrip(), "---", "", f"# {name}", "",
        "Built by datakiln: real curated splits in the default config, generated rows in the",
        f"`synthetic` config. The target `{target}` is a ClassLabel; every row has `origin`",
        "(`real`/`synthetic`); real rows have `source_ref` pointing at their source record.", "",
        "```python", "import datasets",
        "real = datasets.load_dataset(PATH)               # train / test",
        "synthetic = datasets.load_dataset(PATH, \"synthetic\")", "```", "",
        "## Contents", "", "| config | split | rows |", "| --- | --- | --- |",
        *(f"| default | {s} | {n} |" for s, n in split_rows.items()),
        f"| synthetic | train | {synthetic_rows} |", "",
        f"Classes of `{target}` ({len(class_names)}): {', '.join(class_names)}", "",
    ]
    if rejected_by_reason:
        lines += ["## Rejected records", "", "| reason | rows |", "| --- | --- |",
                  *(f"| {r} | {n} |" for r, n in sorted(rejected_by_reason.items())), ""]
    lines += annotation_lines(annotation, "exported as Label Studio tasks to the run directory's `review/`",
                              plot=False)
    if metrics:
        lines += ["## Quality of the synthetic data", "", *READING_GUIDE_TABLE, "", "| metric | value |", "| --- | --- |",
                  *(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                    for k, v in metrics.items() if isinstance(v, (int, float))), "",
                  "Real (train split) against synthetic, column by column:", "", "![columns](columns.png)", ""]
    if synthetic_rows:
        lines += ["Training losses per epoch:", "", "![losses](losses.png)", ""]
    lines += ["## Lineage", "", "```json", json.dumps(lineage_summary, indent=2, default=str), "```", "",
              "Full record: `lineage.json`.", ""]
    return "\n".join(lines)

