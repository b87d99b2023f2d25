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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
import yaml
from PIL import Image

from pipeline import io as dkio
from pipeline.redact import redact


def annotation_fields(class_names: list[str], label_quality: bool) -> list[tuple[str, pa.DataType, dict[str, Any]]]:
    """The label provenance columns every published row carries: (name, Arrow type, HF feature)."""
    fields = [("label_source", pa.string(), {"dtype": "string", "_type": "Value"}),
              ("label_confidence", pa.float32(), {"dtype": "float32", "_type": "Value"})]
    if label_quality:
        fields += [("label_issue", pa.bool_(), {"dtype": "bool", "_type": "Value"}),
                   ("suggested_label", pa.int64(), {"names": list(class_names), "_type": "ClassLabel"})]
    return fields


def image_schema(class_names: list[str], label_quality: bool = False, labelled: bool = True) -> pa.Schema:
    """Arrow schema of a published shard, with the HF features in its metadata (an unlabelled
    dataset's rows have no label columns)."""
    label_fields = [("label", pa.int64(), {"names": list(class_names), "_type": "ClassLabel"}),
                    *annotation_fields(class_names, label_quality)] if labelled else []
    fields = [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]), {"_type": "Image"}),
              *label_fields,
              *((name, pa.string(), {"dtype": "string", "_type": "Value"})
                for name in ("origin", "source_ref", "generator"))]
    features = {name: feature for name, _, feature in fields}
    return pa.schema([(name, arrow_type) for name, arrow_type, _ in fields],
                     metadata={"huggingface": json.dumps({"info": {"features": features}})})


def features_yaml(schema: pa.Schema) -> list[dict[str, Any]]:
    """The card's `dataset_info.features`, from the HF features in the schema's metadata."""
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    rows = []
    for name, feature in features.items():
        if feature["_type"] == "Image":
            rows.append({"name": name, "dtype": "image"})
        elif feature["_type"] == "ClassLabel":
            rows.append({"name": name, "dtype": {"class_label": {"names": dict(enumerate(feature["names"]))}}})
        else:
            rows.append({"name": name, "dtype": feature["dtype"]})
    return rows


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shard(batch: dict[str, np.ndarray], folder: dkio.Location, split: str, schema: pa.Schema) -> dict[str, np.ndarray]:
    count = len(batch["label"])
    if count == 0:
        return {"file": np.array([], dtype=object), "rows": np.array([], dtype=np.int64),
                "bytes": np.array([], dtype=np.int64)}
    first_key = str(batch["source_ref"][0])
    strings = ("label_source", "origin", "source_ref", "generator")
    columns = {
        "image": [{"bytes": encode_png(img), "path": None} for img in batch["image"]],
        "label": batch["label"].tolist(),
        # An all-null column arrives as float NaN from Ray's numpy batches: keep only strings.
        **{name: [v if isinstance(v, str) else None for v in batch[name]] for name in strings},
    }
    columns.update({name: [None] * count for name in schema.names if name not in columns})  # e.g. label_confidence
    table = pa.Table.from_pydict(columns, schema=schema)
    name = f"part-{split}-{hashlib.blake2b(first_key.encode(), digest_size=8).hexdigest()}.parquet"
    target = folder.join(name)
    with folder.fs.open(target.path, "wb") as handle:
        pq.write_table(table, handle, row_group_size=1000)
        size = handle.tell()
    return {"file": np.array([target.path], dtype=object), "rows": np.array([count], dtype=np.int64),
            "bytes": np.array([size], dtype=np.int64)}


class ShardProgress:
    """Counts the shards and bytes written, for a `pipeline.console.Progress` in shards."""

    def __init__(self, progress) -> None:
        self.progress, self.shards, self.bytes = progress, 0, 0

    def add(self, rows: int, size: int) -> None:
        self.shards += 1
        self.bytes += size
        self.progress.update(self.shards, written=_size(self.bytes))

    def close(self) -> None:
        self.progress.close(f"{self.shards} shards, {_size(self.bytes)}")


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"


def write_split(dataset: ray.data.Dataset, folder: dkio.Location, split: str, schema: pa.Schema,
                rows_per_shard: int, on_shard: Callable[[int, int], None] = lambda rows, size: None) -> int:
    """Write one split as ordered shards `{split}-NNNNN-of-NNNNN.parquet` of `rows_per_shard`
    rows (the last may hold fewer); return its row count. `on_shard(rows, bytes)` as each
    shard is written.

    Needs an order-preserving execution (`cluster.runtime.configure_data_context` sets it): rows
    keep the source order, so the same input gives byte-identical shards. One streaming pass:
    consecutive blocks are cut and joined into shards without a shuffle.
    """
    folder.fs.makedirs(folder.path, exist_ok=True)
    written = dataset.repartition(target_num_rows_per_block=rows_per_shard, strict=True).map_batches(
        _write_shard, fn_kwargs={"folder": folder, "split": split, "schema": schema}, batch_size=None,
        batch_format="numpy")
    parts = []
    for part in written.iter_rows():  # one small row per shard, in dataset order
        if int(part["rows"]):
            parts.append(part)
            on_shard(int(part["rows"]), int(part["bytes"]))
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
    schema: pa.Schema
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    near_duplicate_pairs: int = 0
    annotation: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def unlabelled(self) -> bool:
        return bool(self.annotation.get("unlabelled"))


ANNOTATIONS_CREATORS = {"given": "found", "rule": "machine-generated", "model": "machine-generated",
                        "human": "expert-generated"}
"""Hugging Face's `annotations_creators` vocabulary for each `label_source`."""


def annotations_creators(annotation: dict[str, Any]) -> list[str]:
    if annotation.get("unlabelled"):
        return ["no-annotation"]
    return list(dict.fromkeys(ANNOTATIONS_CREATORS[s] for s in annotation.get("label_sources", {"given": 1})))


def annotation_lines(annotation: dict[str, Any], review_hint: str, plot: bool = True) -> list[str]:
    """The card's "Labels" section: where labels came from, pseudo-labels, label quality."""
    lines = ["## Labels", "", "| label_source | rows |", "| --- | --- |",
             *(f"| {s} | {n} |" for s, n in annotation.get("label_sources", {}).items()), ""]
    pseudo = annotation.get("pseudo_labels")
    if pseudo:
        lines += [f"The model labeler gave {pseudo['labelled']} of {pseudo['unlabelled']} unlabelled rows a label "
                  f"(predicted probability ≥ {pseudo['min_confidence']}, in `label_confidence`); "
                  f"{pseudo['to_review']} went to review ({review_hint}).", ""]
    quality = annotation.get("label_quality")
    if quality:
        lines += [f"Label quality (confident learning on out-of-fold probabilities): {quality['flagged']} of "
                  f"{quality['scored']} rows flagged as likely mislabelled (`label_issue`, with `suggested_label`); "
                  f"estimated label noise {quality['noise_estimate']:.2%}; action `{quality['action']}`.", ""]
        if plot and quality["flagged_rows"]:
            lines += ["![likely mislabelled](label_issues.png)", ""]
    return lines


def render_card(card: Card) -> str:
    configs = [{"config_name": "default", "data_files": [
        {"split": s, "path": f"data/{s}-*.parquet"} for s, n in card.split_rows.items() if n]}]
    infos = [{"config_name": "default", "features": features_yaml(card.schema)}]
    if card.synthetic_rows:
        configs.append({"config_name": "synthetic", "data_files": [{"split": "train", "path": "synthetic/train-*.parquet"}]})
        infos.append({"config_name": "synthetic", "features": features_yaml(card.schema)})
    task = "unconditional-image-generation" if card.unlabelled else "image-classification"
    header = yaml.safe_dump({"configs": configs, "dataset_info": infos, "task_categories": [task],
                             "annotations_creators": annotations_creators(card.annotation),
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
        UNLABELLED_NOTE if card.unlabelled else f"Classes ({len(card.class_names)}): {', '.join(card.class_names)}", "",
    ]
    if card.rejected_by_reason:
        lines += ["## Rejected records", "", "| reason | rows |", "| --- | --- |",
                  *(f"| {r} | {n} |" for r, n in sorted(card.rejected_by_reason.items())), ""]
    if card.near_duplicate_pairs:
        lines += ["Near duplicates dropped (kept image left, dropped image right; Hamming distance of the",
                  "perceptual hashes above each pair); the full list is in `lineage.json` and the run's rejects:",
                  "", "![near duplicates](near_duplicates.png)", ""]
    if card.annotation and not card.unlabelled:
        lines += annotation_lines(card.annotation, "exported as Label Studio tasks to the run directory's `review/`")
    if card.metrics:
        lines += ["## Quality of the synthetic data", "", *READING_GUIDE, "",
                  "| metric | synthetic | floor (real train vs real test) |", "| --- | --- | --- |",
                  *(_metric_row(k, card.metrics) for k in card.metrics
                    if not k.endswith(("_floor", "_real")) and isinstance(card.metrics[k], (int, float))), "",
                  *(UNLABELLED_METRICS if card.unlabelled else ["![per-class recall](utility.png)", ""]),
                  "![class means](class_means.png)", ""]
    if card.synthetic_rows:
        rows = ("Real examples on the left, synthetic on the right." if card.unlabelled
                else "Each row is one class: real examples on the left, synthetic on the right.")
        lines += ["## Samples", "", rows, "",
                  "![samples](samples.png)", "", "Training losses per epoch:", "", "![losses](losses.png)", ""]
    lines += ["## Lineage", "", "```json",
              json.dumps(card.lineage_summary, indent=2), "```", "", "Full record: `lineage.json`.", ""]
    return "\n".join(lines)


UNLABELLED_NOTE = ("No labels: the images are one set (no class sub-folders or label column), "
                   "and the synthetic images come from an unconditional generator.")
UNLABELLED_METRICS = [
    "Not computed, because they need classes: TSTR / TRTR, `augment_gain`, per-class recall and the",
    "domain Inception Score. The distances and precision / recall / density / coverage use a feature",
    "extractor trained self-supervised on the real train split (the same network predicting how each",
    "image was rotated), so they still compare synthetic with real images.", ""]
READING_GUIDE = [
    "How to read these numbers. **Utility**: a fixed CNN (`small` for grey images, `photo` with crops and",
    "flips for colour ones) trained on synthetic data and tested on the real test split (TSTR) against",
    "the same recipe trained on real data (TRTR); `tstr_ratio` near",
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


def card_lineage(spec_hash: str, inputs: list[dict[str, Any]], generator: dict[str, Any] | None,
                 rows: dict[str, Any]) -> dict[str, Any]:
    """The card's lineage summary: identities and counts, no local paths (a card travels to the
    Hub; `lineage.json` keeps the full record)."""
    shown_inputs = [{k: v for k, v in i.items() if k != "url"} | {"name": i["url"].rstrip("/").rsplit("/", 1)[-1]}
                    for i in inputs]
    shown_generator = None if generator is None else {
        k: v for k, v in generator.items() if k in ("generator_id", "sha256", "epochs", "steps", "restarts")}
    return {"spec_hash": spec_hash, "inputs": shown_inputs, "generator": shown_generator, "rows": rows}


def write_json(loc: dkio.Location, payload: Any) -> None:
    """Write `payload` as JSON, credentials masked (see `pipeline.redact`)."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    with loc.fs.open(loc.path, "w") as handle:
        handle.write(json.dumps(redact(json.loads(text)), indent=2, sort_keys=True))
