"""Write a Hugging Face dataset: Parquet shards, typed features, a dataset card, atomically.

Layout under the target (what `datasets.load_dataset(target[, "synthetic"])` reads):
`data/{split}-NNNNN-of-NNNNN.parquet` (real splits), `synthetic/train-…` (config
`synthetic`), `README.md` (card with `configs:` and `dataset_info`), plus the run's
`lineage.json`, `metrics.json` and plots. Everything is written under a staging folder and
made visible only when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
import yaml
from PIL import Image

from pipeline import io as dkio


def image_schema(class_names: list[str]) -> pa.Schema:
    """Arrow schema of a published shard, with the HF features in its metadata."""
    features = {
        "image": {"_type": "Image"},
        "label": {"names": list(class_names), "_type": "ClassLabel"},
        "label_source": {"dtype": "string", "_type": "Value"},
        "origin": {"dtype": "string", "_type": "Value"},
        "source_ref": {"dtype": "string", "_type": "Value"},
        "generator": {"dtype": "string", "_type": "Value"},
    }
    return pa.schema(
        [
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("label", pa.int64()),
            ("label_source", pa.string()),
            ("origin", pa.string()),
            ("source_ref", pa.string()),
            ("generator", pa.string()),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )


def _features_yaml(class_names: list[str]) -> list[dict[str, Any]]:
    strings = ("label_source", "origin", "source_ref", "generator")
    return [
        {"name": "image", "dtype": "image"},
        {"name": "label", "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(class_names)}}}},
        *({"name": name, "dtype": "string"} for name in strings),
    ]


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shard(batch: dict[str, np.ndarray], folder: dkio.Location, split: str, schema: pa.Schema) -> dict[str, np.ndarray]:
    count = len(batch["label"])
    if count == 0:
        return {"file": np.array([], dtype=object), "rows": np.array([], dtype=np.int64)}
    first_key = str(batch["source_ref"][0])
    strings = ("label_source", "origin", "source_ref", "generator")
    columns = {
        "image": [{"bytes": encode_png(img), "path": None} for img in batch["image"]],
        "label": batch["label"].tolist(),
        # An all-null column arrives as float NaN from Ray's numpy batches: keep only strings.
        **{name: [v if isinstance(v, str) else None for v in batch[name]] for name in strings},
    }
    table = pa.Table.from_pydict(columns, schema=schema)
    name = f"part-{split}-{hashlib.blake2b(first_key.encode(), digest_size=8).hexdigest()}.parquet"
    target = folder.join(name)
    with folder.fs.open(target.path, "wb") as handle:
        pq.write_table(table, handle, row_group_size=1000)
    return {"file": np.array([target.path], dtype=object), "rows": np.array([count], dtype=np.int64)}


def write_split(dataset: ray.data.Dataset, folder: dkio.Location, split: str, schema: pa.Schema,
                rows_per_shard: int) -> int:
    """Write one split as ordered shards `{split}-NNNNN-of-NNNNN.parquet` of `rows_per_shard`
    rows (the last may hold fewer); return its row count.

    Needs an order-preserving execution (`cluster.runtime.configure_data_context` sets it): rows
    keep the source order, so the same input gives byte-identical shards. One streaming pass:
    consecutive blocks are cut and joined into shards without a shuffle.
    """
    folder.fs.makedirs(folder.path, exist_ok=True)
    written = dataset.repartition(target_num_rows_per_block=rows_per_shard, strict=True).map_batches(
        _write_shard, fn_kwargs={"folder": folder, "split": split, "schema": schema}, batch_size=None,
        batch_format="numpy")
    parts = [p for p in written.take_all() if int(p["rows"])]  # one small row per shard, in dataset order
    for index, part in enumerate(parts):
        folder.fs.mv(part["file"], folder.join(f"{split}-{index:05d}-of-{len(parts):05d}.parquet").path)
    return sum(int(p["rows"]) for p in parts)


@dataclass
class Card:
    """What the dataset card says besides the data itself."""

    name: str
    class_names: list[str]
    split_rows: dict[str, int]
    synthetic_rows: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    near_duplicate_pairs: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage_summary: dict[str, Any] = field(default_factory=dict)


def render_card(card: Card) -> str:
    configs = [{"config_name": "default", "data_files": [
        {"split": s, "path": f"data/{s}-*.parquet"} for s, n in card.split_rows.items() if n]}]
    infos = [{"config_name": "default", "features": _features_yaml(card.class_names)}]
    if card.synthetic_rows:
        configs.append({"config_name": "synthetic", "data_files": [{"split": "train", "path": "synthetic/train-*.parquet"}]})
        infos.append({"config_name": "synthetic", "features": _features_yaml(card.class_names)})
    header = yaml.safe_dump({"configs": configs, "dataset_info": infos, "task_categories": ["image-classification"],
                             "tags": ["datakiln", "synthetic"]}, sort_keys=False)
    lines = [
        "---", header.rstrip(), "---", "", f"# {card.name}", "",
        "Built by [datakiln](https://pypi.org/project/datakiln/): real curated splits in the default config,",
        "generated samples in the `synthetic` config. Every row has `origin` (`real`/`synthetic`);",
        "real rows have `source_ref` pointing at their source record.", "",
        "```python", "import datasets",
        "real = datasets.load_dataset(PATH)               # train / test",
        "synthetic = datasets.load_dataset(PATH, \"synthetic\")", "```", "",
        "## Contents", "", "| config | split | rows |", "| --- | --- | --- |",
        *(f"| default | {s} | {n} |" for s, n in card.split_rows.items()),
        f"| synthetic | train | {card.synthetic_rows} |", "",
        f"Classes ({len(card.class_names)}): {', '.join(card.class_names)}", "",
    ]
    if card.rejected_by_reason:
        lines += ["## Rejected records", "", "| reason | rows |", "| --- | --- |",
                  *(f"| {r} | {n} |" for r, n in sorted(card.rejected_by_reason.items())), ""]
    if card.near_duplicate_pairs:
        lines += ["Near duplicates dropped (kept image left, dropped image right; Hamming distance of the",
                  "perceptual hashes above each pair); the full list is in `lineage.json` and the run's rejects:",
                  "", "![near duplicates](near_duplicates.png)", ""]
    if card.metrics:
        lines += ["## Quality of the synthetic data", "", *READING_GUIDE, "",
                  "| metric | synthetic | floor (real train vs real test) |", "| --- | --- | --- |",
                  *(_metric_row(k, card.metrics) for k in card.metrics
                    if not k.endswith(("_floor", "_real")) and isinstance(card.metrics[k], (int, float))), "",
                  "![per-class recall](utility.png)", "", "![class means](class_means.png)", ""]
    if card.synthetic_rows:
        lines += ["## Samples", "", "Each row is one class: real examples on the left, synthetic on the right.", "",
                  "![samples](samples.png)", "", "Training losses per epoch:", "", "![losses](losses.png)", ""]
    lines += ["## Lineage", "", "```json",
              json.dumps(card.lineage_summary, indent=2), "```", "", "Full record: `lineage.json`.", ""]
    return "\n".join(lines)


READING_GUIDE = [
    "How to read these numbers. **Utility**: a fixed small CNN trained on synthetic data and tested on",
    "the real test split (TSTR) against the same recipe trained on real data (TRTR); `tstr_ratio` near",
    "1 means the synthetic data teaches as much as the real data; `augment_gain` is the accuracy",
    "change from adding the synthetic set to the real one. **Distances** are measured in the feature",
    "space of that real-trained classifier (nothing downloaded): `fid_domain`/`kid_domain` (lower is",
    "better) are only meaningful next to their floor, the same distance between two real samples;",
    "`precision` (realism), `recall` (coverage of the real variety), `density` and `coverage` are in",
    "[0, 1] (density can exceed 1). `fid_inception`, when present, is the standard FID (Inception-v3",
    "pool features from a local weights file), comparable with published FIDs. **Memorisation**: `dcr_ratio` well below 1 or a non-zero",
    "`nn_copy_fraction` means the generator reproduces training images.",
]


def _metric_row(key: str, metrics: dict[str, Any]) -> str:
    floor = metrics.get(f"{key}_floor", metrics.get(f"{key}_real"))
    shown = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return f"| {key} | {shown(metrics[key])} | {shown(floor) if floor is not None else ''} |"


def write_json(loc: dkio.Location, payload: Any) -> None:
    with loc.fs.open(loc.path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
