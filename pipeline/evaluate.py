"""`datakiln evaluate`: compare any two published datasets (or a synthetic config against its
real splits) with the same metrics and report as a run."""

from __future__ import annotations

import io as stdio
import json
import os
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline import io
from pipeline.errors import SourceError, SpecError
from synth.metrics import Split, evaluate_images


def _decode(table: pa.Table) -> Split:
    images = []
    for cell in table["image"].to_pylist():
        array = np.asarray(Image.open(stdio.BytesIO(cell["bytes"])))
        images.append(array[:, :, None] if array.ndim == 2 else array)
    return np.stack(images), table["label"].to_numpy()


def read_split(url: str, folder: str, split: str) -> tuple[Split, list[str]]:
    """A published split as in-memory (images, labels), and its class names.

    Evaluation holds its three sets in memory anyway, so the shards are read and decoded
    here, in shard order, without a Ray Data pass.
    """
    root = io.require_exists(url, "published dataset")
    files = sorted(root.fs.glob(root.join(folder, f"{split}-*.parquet").path))
    if not files:
        raise SourceError(f"{url}: no {folder}/{split}-*.parquet shards (is this a datakiln dataset?)")
    parts, names = [], None
    for path in files:
        with root.fs.open(path, "rb") as handle:
            table = pq.read_table(handle, columns=["image", "label"])
        if names is None:
            try:
                names = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
            except (KeyError, TypeError, ValueError):
                raise SourceError(f"{root.uri(path)}: no ClassLabel names in the 'huggingface' schema metadata") from None
        parts.append(_decode(table))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), names


def check_inception_weights(path: str | None) -> str | None:
    """Fail before any work when `evaluate.inception_weights` is unusable; its sha256 for lineage."""
    if not path:
        return None
    from synth.metrics import inception

    try:
        inception.load(path)
    except ValueError as error:
        raise SpecError(f"evaluate.inception_weights: {error}") from None
    return inception.file_sha256(path)


def evaluate_published(real_url: str, synthetic_url: str, out: str | None, epochs: int, seed: int,
                       k: int = 3, copy_fraction: float = 0.1, inception_weights: str | None = None) -> dict[str, Any]:
    from pipeline.plots import class_means, utility_bars
    train, names = read_split(real_url, "data", "train")
    test, _ = read_split(real_url, "data", "test")
    synthetic, synthetic_names = read_split(synthetic_url, "synthetic", "train")
    if synthetic_names != names:
        raise SourceError(f"{synthetic_url}: class names {synthetic_names} differ from {real_url}'s {names}")
    inception_sha256 = check_inception_weights(inception_weights)
    evaluation = evaluate_images(train, test, synthetic, len(names), epochs, seed, k=k, copy_fraction=copy_fraction,
                                 inception_weights=inception_weights)
    metrics = {**evaluation.metrics, "feature_extractor_sha256": evaluation.extractor_sha256}
    if inception_sha256:
        metrics["inception_weights_sha256"] = inception_sha256
    if out:
        target = io.resolve(out)
        target.fs.makedirs(target.path, exist_ok=True)
        with target.fs.open(target.join("metrics.json").path, "w") as handle:
            json.dump(metrics, handle, indent=2, sort_keys=True)
        with tempfile.TemporaryDirectory() as folder:
            utility_bars(metrics["tstr_per_class_recall"], metrics["trtr_per_class_recall"], names,
                         os.path.join(folder, "utility.png"))
            class_means(evaluation.class_means["real"], evaluation.class_means["synthetic"], names,
                        os.path.join(folder, "class_means.png"))
            for name in ("utility.png", "class_means.png"):
                target.fs.put_file(os.path.join(folder, name), target.join(name).path)
    return metrics
