"""Images: folders of photos, IDX files, image columns of Parquet — the image plug-in.

Rows are decoded, converted, resized and hashed by the fused row operators in one Ray
Data pass into the image stage (`pipeline.modalities.image_stage`); dedup decides on the
stage's hashes. Pseudo-labels and label quality use the evaluation suite's small CNN. The
generators are the image models of `synth.models` (`ImageSchema`), sampled by Ray Data
actors; the metrics are `synth.metrics.evaluate_images`. Rows publish as `datasets.Image`
(PNG, an input PNG whose pixels no operator changed kept as it is) with a `ClassLabel`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data

from pipeline import io, ops, plots, sources
from pipeline.annotate import Annotation
from pipeline.columns import reason_array
from pipeline.console import CONSOLE, detail, log
from pipeline.errors import SpecError
from pipeline.evaluate import check_inception_weights
from pipeline.modalities.base import Modality, Staged
from pipeline.modalities.image_stage import build_stage, image_stage_key, op_entries
from pipeline.ops.base import REJECT_REASON
from pipeline.publish import (ShardProgress, annotation_features, arrow_schema, encode_png, number_shards,
                              string_features, write_shard)
from pipeline.split import SPLIT_CODES
from pipeline.stage import stage_folder

SAMPLES_SHOWN = 6
"""Examples of each class in `samples.png` (real on the left, synthetic on the right)."""
PROVENANCE = ("origin", "source_ref", "generator")
MIN_SAMPLES = 40_000
"""The model labeler trains on at least this many samples (epochs × rows), so a few hundred
labelled rows still get enough optimiser steps (MNIST, 1,000 labelled: 40 epochs, 98.4 % of
the pseudo-labels at ≥ 0.95 confidence are right, 91.6 % coverage)."""
UNLABELLED_NOTE = ("No labels: the images are one set (no class sub-folders or label column), "
                   "and the synthetic images come from an unconditional generator.")
UNLABELLED_METRICS = [
    "Not computed, because they need classes: TSTR / TRTR, `augment_gain`, per-class recall and the",
    "domain Inception Score. The distances and precision / recall / density / coverage use a feature",
    "extractor trained self-supervised on the real train split (the same network predicting how each",
    "image was rotated), so they still compare synthetic with real images.", ""]
AUGMENT_SKIPPED = ("`augment_gain` (the classifier trained on real + synthetic) was not computed: "
                   "`evaluate.augment` is false.")
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




def image_schema(class_names: list[str], label_quality: bool = False, labelled: bool = True) -> pa.Schema:
    """Arrow schema of a published image shard, its HF features in the metadata (an
    unlabelled dataset's rows have no label columns)."""
    import datasets

    labels = {"label": datasets.ClassLabel(names=list(class_names)),
              **annotation_features(class_names, label_quality)} if labelled else {}
    return arrow_schema({"image": datasets.Image(), **labels, **string_features(PROVENANCE)})


def _write_rows(batch: dict[str, np.ndarray], folder: io.Location, split: str, schema: pa.Schema) -> dict[str, np.ndarray]:
    count = len(batch["source_ref"])
    if count == 0:
        return {"file": np.array([], dtype=object), "rows": np.array([], dtype=np.int64),
                "bytes": np.array([], dtype=np.int64)}
    strings = ("label_source", "origin", "source_ref", "generator")
    columns = {
        "image": [{"bytes": encode_png(img), "path": None} for img in batch["image"]],
        # An all-null column arrives as float NaN from Ray's numpy batches: keep only strings.
        **{name: [v if isinstance(v, str) else None for v in batch[name]] for name in strings if name in batch},
    }
    if "label" in schema.names:
        columns["label"] = batch["label"].tolist()
    columns.update({name: [None] * count for name in schema.names if name not in columns})  # e.g. label_confidence
    name = f"part-{split}-{hashlib.blake2b(str(batch['source_ref'][0]).encode(), digest_size=8).hexdigest()}.parquet"
    path, size = write_shard(pa.Table.from_pydict(columns, schema=schema), folder, name)
    return {"file": np.array([path], dtype=object), "rows": np.array([count], dtype=np.int64),
            "bytes": np.array([size], dtype=np.int64)}


def write_split(dataset: ray.data.Dataset, folder: io.Location, split: str, schema: pa.Schema,
                rows_per_shard: int, on_shard: Callable[[int, int], None] = lambda rows, size: None) -> int:
    """Write one split of image rows as ordered shards of `rows_per_shard` rows (the last may
    hold fewer); return its row count. `on_shard(rows, bytes)` as each shard is written.

    Needs an order-preserving execution (`cluster.runtime.configure_data_context` sets it): rows
    keep the source order, so the same input gives byte-identical shards. One streaming pass:
    consecutive blocks are cut and joined into shards without a shuffle.
    """
    folder.fs.makedirs(folder.path, exist_ok=True)
    written = dataset.repartition(target_num_rows_per_block=rows_per_shard, strict=True).map_batches(
        _write_rows, fn_kwargs={"folder": folder, "split": split, "schema": schema}, batch_size=None,
        batch_format="numpy")
    parts = []
    for part in written.iter_rows():  # one small row per shard, in dataset order
        if int(part["rows"]):
            parts.append(part)
            on_shard(int(part["rows"]), int(part["bytes"]))
    number_shards(folder, split, [part["file"] for part in parts])
    return sum(int(p["rows"]) for p in parts)


class ImageClassifier:
    """The model labeler's and label quality's classifier: the evaluation suite's small CNN
    on the staged pixels (row indices into them)."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels

    def fit_predict(self, train: np.ndarray, labels: np.ndarray, rows: np.ndarray, num_classes: int,
                    seed: int, epochs: int) -> np.ndarray:
        from synth.metrics import classifier

        epochs = max(epochs, math.ceil(MIN_SAMPLES / max(len(train), 1)))
        model = classifier.fit(self.pixels[train], labels, num_classes, epochs, seed)
        return classifier.embed(model, self.pixels[rows])["probs"]


class ImageModality(Modality):
    unit = "images"
    key_metrics = ("tstr_accuracy", "fid_domain", "precision", "recall", "nn_copy_fraction")
    logged_metrics = ("tstr_ratio", "fid_domain", "precision", "recall", "nn_copy_fraction")

    def preflight(self) -> None:
        self.inception_sha256 = check_inception_weights(self.spec.evaluate.inception_weights)

    def collect(self):
        collected = sources.read(self.spec.source)
        files = sum(f.get("files", 0) for f in collected.fingerprints)
        counts = ([f"{files:,} files"] if files else []) + (
            [f"{collected.rows:,} rows"] if collected.rows is not None and collected.rows != files else [])
        log("collect", f"{self.spec.source.path or self.spec.source.format}: {', '.join(counts) or 'opened'}")
        return collected

    def stage(self, collected, fresh: bool) -> Staged:
        spec = self.spec
        key = image_stage_key(spec, collected.fingerprints, self.run.code_version)
        self.staged = build_stage(spec, collected, stage_folder(spec, key, fresh), key)
        keys = self.staged.keys
        reasons = reason_array(keys[REJECT_REASON])
        _, dataset_ops = ops.split_ops(op_entries(spec))
        self.duplicates = {op.name: op.decide(keys, reasons) for op in dataset_ops}
        self.resolved_ops = self.staged.resolved_ops + [{"op": op.name, **op.params.model_dump()} for op in dataset_ops]
        shape = self.staged.shape
        detail("preprocess", f"images {shape.height}x{shape.width}x{shape.channels}; ops: "
               + ", ".join(e["op"] for e in self.resolved_ops)
               + "".join(f"; {name}: {len(pairs)} marked" for name, pairs in self.duplicates.items()))
        stage = {"key": self.staged.key, "folder": self.staged.folder.url, "reused": self.staged.reused}
        return Staged(keys=keys, given=keys["label"], reasons=reasons, ref_hashes=keys["ref_hash"].to_numpy(),
                      stage=stage)

    def check_model(self) -> None:
        from synth.models import get_model

        shape, model = self.staged.shape, self.spec.synthesize.model
        multiple = get_model(model).side_multiple
        if shape.height % multiple or shape.width % multiple:
            raise SpecError(f"synthesize.model: '{model}' needs image sides that are multiples of "
                            f"{multiple}, the images are {shape.height}x{shape.width}; add a resize operator "
                            f"(preprocess.ops: {{op: resize, size: {max(multiple, shape.height // multiple * multiple)}}})")

    def classifier(self) -> ImageClassifier:
        return ImageClassifier(self.staged.pixels())

    def unlabelled(self, staged: Staged) -> bool:
        """The spec's `annotate.unlabelled`, or by default: an image folder with no class sub-folders."""
        if self.spec.annotate.unlabelled is not None:
            return self.spec.annotate.unlabelled
        return self.spec.source.format == "images" and not any(staged.given.to_pylist())

    def review_items(self, rows: np.ndarray) -> dict[str, Any]:
        return {"images": self.staged.images(rows.tolist())}

    def split(self, codes: np.ndarray, annotation: Annotation) -> dict[str, int]:
        self.codes = codes
        self.train, self.test = (self.staged.split(codes, annotation.label, s) for s in SPLIT_CODES)
        self.split_rows = {s: int((codes == code).sum()) for s, code in SPLIT_CODES.items()}
        return self.split_rows

    def training_data(self, annotation: Annotation):
        from synth.models.base import ImageSchema

        shape = self.staged.shape
        schema = ImageSchema(shape.height, shape.width, shape.channels, len(annotation.class_names))
        return self.train.select_columns(["image", "label"]), schema, f"{self.split_rows['train']} images"

    def sample(self, model_dir: str, generator_id: str, annotation: Annotation) -> int:
        from synth.progress import watch
        from synth.sample import sample

        syn, num_classes = self.spec.synthesize, len(annotation.class_names)
        progress = CONSOLE.progress("sample", num_classes * syn.samples_per_class, "images")
        with watch(lambda state: progress.update(state["done"])) as board:
            self.synthetic = sample(model_dir, num_classes, syn.samples_per_class, self.spec.seed, generator_id,
                                    syn.sampler_actors, board=board, precision=syn.precision).materialize()
        rows = self.synthetic.count()
        progress.close(f"{rows:,} images from {generator_id}")
        return rows

    def evaluate(self, annotation: Annotation, step: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
        from synth.metrics import evaluate_images, pixels

        spec = self.spec
        self.evaluation = evaluate_images(pixels(self.train), pixels(self.test), pixels(self.synthetic),
                                          len(annotation.class_names), spec.evaluate.classifier_epochs, spec.seed,
                                          k=spec.evaluate.k, copy_fraction=spec.evaluate.copy_fraction,
                                          inception_weights=spec.evaluate.inception_weights,
                                          classifier_recipe=spec.evaluate.classifier,
                                          labelled=not annotation.unlabelled,
                                          augment=spec.evaluate.augment, step=step)
        extras = {"feature_extractor_sha256": self.evaluation.extractor_sha256}
        if self.inception_sha256:
            extras["inception_weights_sha256"] = self.inception_sha256
        return self.evaluation.metrics, extras

    def publish(self, staging: io.Location, annotation: Annotation, generator_id: str | None) -> tuple[dict[str, int], int]:
        rows_per_shard = self.spec.publish.rows_per_shard
        synthetic = getattr(self, "synthetic", None)
        self.schema = image_schema(annotation.class_names, label_quality=annotation.issue is not None,
                                   labelled=not annotation.unlabelled)
        shards = self.staged.shard_groups(rows_per_shard) + (
            -(-synthetic.count() // rows_per_shard) if synthetic is not None else 0)
        progress = ShardProgress(CONSOLE.progress("publish", shards, "shards"))
        published = self.staged.publish(self.codes, annotation, staging.join("data"), self.schema, rows_per_shard,
                                        on_shard=progress.add)
        synthetic_rows = 0
        if synthetic is not None:
            synthetic_rows = write_split(synthetic, staging.join("synthetic"), "train", self.schema, rows_per_shard,
                                         on_shard=progress.add)
        progress.close()
        return published, synthetic_rows

    def lineage(self) -> dict[str, Any]:
        shape = self.staged.shape
        return {"resolved_ops": self.resolved_ops, "image_shape": [shape.height, shape.width, shape.channels],
                "duplicates": _duplicate_report(self.duplicates, self.staged.keys["source_ref"])}

    def _near_duplicates(self) -> list[tuple[int, int, int]]:
        return self.duplicates.get("near_dedup", [])[:SAMPLES_SHOWN * 2]

    def plots(self, staging: io.Location, annotation: Annotation) -> None:
        class_names = annotation.class_names
        if getattr(self, "synthetic", None) is not None:
            _write_samples(staging, self.train, self.synthetic, class_names)
        evaluation = getattr(self, "evaluation", None)
        if evaluation is not None:
            if "tstr_per_class_recall" in evaluation.metrics:
                plots.put_plot(staging, "utility.png", lambda path: plots.utility_bars(
                    evaluation.metrics["tstr_per_class_recall"], evaluation.metrics["trtr_per_class_recall"],
                    class_names, path))
            plots.put_plot(staging, "class_means.png", lambda path: plots.class_means(
                evaluation.class_means["real"], evaluation.class_means["synthetic"], class_names, path))
        near = self._near_duplicates()
        if near:
            pictures = self.staged.images([row for kept, row, _ in near for row in (kept, row)])
            plots.put_plot(staging, "near_duplicates.png", lambda path: plots.duplicate_pairs(
                pictures[0::2], pictures[1::2], [d for _, _, d in near], path))
        flagged = annotation.report.get("label_quality", {}).get("flagged_rows", [])
        if flagged:
            pictures = self.staged.images(flagged)
            plots.put_plot(staging, "label_issues.png", lambda path: plots.label_issues(
                pictures, [class_names[annotation.given[i]] for i in flagged],
                [class_names[annotation.suggested[i]] for i in flagged], path))

    def card(self, annotation: Annotation) -> dict[str, Any]:
        unlabelled = annotation.unlabelled
        curation = []
        if self._near_duplicates():
            curation = ["Near duplicates dropped (kept image left, dropped image right; Hamming distance of the",
                        "perceptual hashes above each pair); the full list is in `lineage.json` and the run's rejects:",
                        "", "![near duplicates](near_duplicates.png)", ""]
        sections = []
        if getattr(self, "synthetic", None) is not None:
            rows = ("Real examples on the left, synthetic on the right." if unlabelled
                    else "Each row is one class: real examples on the left, synthetic on the right.")
            sections = ["## Samples", "", rows, "",
                        "![samples](samples.png)", "", "Training losses per epoch:", "", "![losses](losses.png)", ""]
        utility_plots = UNLABELLED_METRICS if unlabelled else ["![per-class recall](utility.png)", ""]
        if not unlabelled and not self.spec.evaluate.augment:
            utility_plots = [AUGMENT_SKIPPED, "", *utility_plots]
        return {"schema": self.schema,
                "task": "unconditional-image-generation" if unlabelled else "image-classification",
                "classes": UNLABELLED_NOTE if unlabelled else "", "curation": curation, "label_plot": True,
                "reading_guide": READING_GUIDE,
                "quality_plots": [*utility_plots, "![class means](class_means.png)", ""],
                "sections": sections}


def _duplicate_report(duplicates: dict[str, list[tuple[int, int, int]]], refs: pa.ChunkedArray) -> dict[str, Any]:
    """Per dedup operator: how many rows it marked and the first few (kept, dropped) pairs."""
    return {name: {"marked": len(pairs), "examples": [
        {"kept": refs[kept].as_py(), "dropped": refs[row].as_py(), "distance": distance}
        for kept, row, distance in pairs[:10]]} for name, pairs in duplicates.items()}


def _first_rows(table: pa.Table, rows: int) -> pa.Table:
    return table.filter(pa.compute.less(table["sample_index"], rows))


def _examples_of_every_class(data: ray.data.Dataset, num_classes: int, per_class: int) -> dict[str, np.ndarray]:
    """The first `per_class` images of each class in `data`'s order (reading only as far as
    needed: a class-sorted source has its last class at the end)."""
    kept: dict[int, list[np.ndarray]] = {label: [] for label in range(num_classes)}
    for batch in data.select_columns(["image", "label"]).iter_batches(batch_size=1024, batch_format="numpy"):
        for image, label in zip(batch["image"], batch["label"]):
            if len(kept[int(label)]) < per_class:
                kept[int(label)].append(image)
        if all(len(images) == per_class for images in kept.values()):
            break
    labels = [label for label, images in kept.items() for _ in images]
    images = [image for group in kept.values() for image in group]
    return {"image": np.stack(images), "label": np.array(labels, dtype=np.int64)}


def _write_samples(staging: io.Location, train: ray.data.Dataset, synthetic: ray.data.Dataset,
                   class_names: list[str]) -> None:
    wanted = SAMPLES_SHOWN * len(class_names)
    real = _examples_of_every_class(train, len(class_names), SAMPLES_SHOWN)
    # The sampler interleaves classes, so the first rows hold SAMPLES_SHOWN of each class.
    fake = synthetic.map_batches(_first_rows, fn_kwargs={"rows": wanted}, batch_format="pyarrow").select_columns(
        ["image", "label"]).take_batch(wanted)
    plots.put_plot(staging, "samples.png", lambda path: plots.sample_grid(real, fake, class_names, path, SAMPLES_SHOWN))
