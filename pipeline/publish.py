"""Write a Hugging Face dataset: Parquet shards, typed features, a dataset card, atomically.

Layout under the target (what `datasets.load_dataset(target[, "synthetic"])` reads):
`data/{split}-NNNNN-of-NNNNN.parquet` (real splits), `synthetic/train-…` (config
`synthetic`; `pipeline.commit` adds a version to these names as it publishes), `README.md` (card with `configs:` and `dataset_info`), plus the run's
`lineage.json`, `metrics.json` and plots. Everything is written under a staging folder and
made visible only when complete.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline import io as dkio
from pipeline.redact import redact, redact_text


def arrow_schema(features: dict[str, Any]) -> pa.Schema:
    """The Arrow schema of a published shard, from its Hugging Face features (`datasets.Image`,
    `ClassLabel`, `Value`, in column order); the features travel in the schema's metadata."""
    import datasets

    return datasets.Features(features).arrow_schema


def annotation_features(class_names: list[str], label_quality: bool) -> dict[str, Any]:
    """The label provenance columns every published labelled row carries, as HF features."""
    import datasets

    features = {"label_source": datasets.Value("string"), "label_confidence": datasets.Value("float32")}
    if label_quality:
        features.update(label_issue=datasets.Value("bool"), suggested_label=datasets.ClassLabel(names=list(class_names)))
    return features


def string_features(names: tuple[str, ...]) -> dict[str, Any]:
    import datasets

    return {name: datasets.Value("string") for name in names}


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(table: pa.Table, folder: dkio.Location, name: str, row_group_size: int = 1000) -> tuple[str, int]:
    """Write one Parquet shard `name` under `folder`; return its path and size in bytes. The
    one shard writer of every modality: shards are written under a temporary name by the
    task that makes them, then `number_shards` gives them their final names in order."""
    target = folder.join(name)
    with folder.fs.open(target.path, "wb") as handle:
        pq.write_table(table, handle, row_group_size=row_group_size)
        size = handle.tell()
    return target.path, size


def shard_name(split: str, index: int, count: int) -> str:
    """`{split}-NNNNN-of-NNNNN.parquet`: the names `datasets.load_dataset` groups into splits."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def number_shards(folder: dkio.Location, split: str, paths: list[str]) -> None:
    """Rename the written shards of one split, in order, to their final names."""
    for index, path in enumerate(paths):
        folder.fs.mv(path, folder.join(shard_name(split, index, len(paths))).path)


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


@dataclass
class Card:
    """What the dataset card says besides the data itself: the counts and records every run
    has, and what the run's modality adds (its task, its sections and plots)."""

    name: str
    class_names: list[str]
    split_rows: dict[str, int]
    synthetic_rows: int
    schema: pa.Schema
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    annotation: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage_summary: dict[str, Any] = field(default_factory=dict)
    task: str = "image-classification"
    """Hugging Face's `task_categories` entry."""
    tags: tuple[str, ...] = ("datakiln", "synthetic")
    about: tuple[str, ...] = ("generated samples in the `synthetic` config. Every row has `origin` (`real`/`synthetic`);",
                              "real rows have `source_ref` pointing at their source record.")
    """What the dataset holds, after "real curated splits in the default config," (lines)."""
    classes: str = ""
    """The line naming the classes (default: their count and names)."""
    curation: list[str] = field(default_factory=list)
    """Lines after the rejected records (e.g. near duplicates)."""
    label_plot: bool = False
    """Whether the Labels section shows `label_issues.png`."""
    reading_guide: list[str] = field(default_factory=list)
    """How to read the metrics (lines before their table)."""
    quality_plots: list[str] = field(default_factory=list)
    """Lines after the metrics table (plots)."""
    sections: list[str] = field(default_factory=list)
    """The modality's own sections, before the lineage."""

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


def card_header(card: Card) -> str:
    """The card's YAML header: the configs `datasets.load_dataset` reads and their features,
    through `huggingface_hub.DatasetCardData` and `datasets`' own `dataset_info` writer."""
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    features = datasets.Features.from_arrow_schema(card.schema)
    configs = [{"config_name": "default", "data_files": [
        {"split": s, "path": f"data/{s}-*.parquet"} for s, n in card.split_rows.items() if n]}]
    if card.synthetic_rows:
        configs.append({"config_name": "synthetic", "data_files": [{"split": "train", "path": "synthetic/train-*.parquet"}]})
    data = DatasetCardData(configs=configs, task_categories=[card.task],
                           annotations_creators=annotations_creators(card.annotation), tags=list(card.tags))
    DatasetInfosDict({config["config_name"]: datasets.DatasetInfo(features=features, config_name=config["config_name"])
                      for config in configs}).to_dataset_card_data(data)
    return data.to_yaml()


def render_card(card: Card) -> str:
    """The dataset card (`README.md`) of every modality: header, contents, rejects, labels,
    quality, the modality's own sections, lineage."""
    lines = [
        "---", card_header(card).rstrip(), "---", "", f"# {card.name}", "",
        "Built by [datakiln](https://pypi.org/project/datakiln/): real curated splits in the default config,",
        *card.about, "",
        "```python", "import datasets",
        "real = datasets.load_dataset(PATH)               # train / test",
        "synthetic = datasets.load_dataset(PATH, \"synthetic\")", "```", "",
        "## Contents", "", "| config | split | rows |", "| --- | --- | --- |",
        *(f"| default | {s} | {n} |" for s, n in card.split_rows.items()),
        f"| synthetic | train | {card.synthetic_rows} |", "",
        card.classes or f"Classes ({len(card.class_names)}): {', '.join(card.class_names)}", "",
    ]
    if card.rejected_by_reason:
        lines += ["## Rejected records", "", "| reason | rows |", "| --- | --- |",
                  *(f"| {r} | {n} |" for r, n in sorted(card.rejected_by_reason.items())), ""]
    lines += card.curation
    if card.annotation and not card.unlabelled:
        lines += annotation_lines(card.annotation, "exported as Label Studio tasks to the run directory's `review/`",
                                  plot=card.label_plot)
    if card.metrics:
        lines += ["## Quality of the synthetic data", "", *card.reading_guide, "",
                  "| metric | synthetic | real (floor) |", "| --- | --- | --- |",
                  *(_metric_row(k, card.metrics) for k in card.metrics
                    if not k.endswith(("_floor", "_real")) and isinstance(card.metrics[k], (int, float))), "",
                  *card.quality_plots]
    lines += card.sections
    lines += ["## Lineage", "", "```json",
              json.dumps(card.lineage_summary, indent=2, default=str), "```", "", "Full record: `lineage.json`.", ""]
    return "\n".join(lines)


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


def write_card(staging: dkio.Location, card: str) -> None:
    """Write the dataset card `README.md`, credentials masked (see `pipeline.redact`)."""
    with staging.fs.open(staging.join("README.md").path, "w") as handle:
        handle.write(redact_text(card))


def write_json(loc: dkio.Location, payload: Any) -> None:
    """Write `payload` as JSON, credentials masked (see `pipeline.redact`)."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    with loc.fs.open(loc.path, "w") as handle:
        handle.write(json.dumps(redact(json.loads(text)), indent=2, sort_keys=True))
