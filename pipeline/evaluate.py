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
import ray.data
from PIL import Image

from pipeline import io
from pipeline.errors import SourceError


def _decode(table: pa.Table) -> dict[str, np.ndarray]:
    images = []
    for cell in table["image"].to_pylist():
        array = np.asarray(Image.open(stdio.BytesIO(cell["bytes"])))
        images.append(array[:, :, None] if array.ndim == 2 else array)
    return {"image": np.stack(images), "label": table["label"].to_numpy()}


def read_split(url: str, folder: str, split: str) -> tuple[ray.data.Dataset, list[str]]:
    """A published split as (`image` arrays, `label`) rows, and its class names."""
    root = io.require_exists(url, "published dataset")
    files = sorted(root.fs.glob(root.join(folder, f"{split}-*.parquet").path))
    if not files:
        raise SourceError(f"{url}: no {folder}/{split}-*.parquet shards (is this a datakiln dataset?)")
    with root.fs.open(files[0], "rb") as handle:
        metadata = pq.read_schema(handle).metadata or {}
    try:
        names = json.loads(metadata[b"huggingface"])["info"]["features"]["label"]["names"]
    except (KeyError, ValueError):
        raise SourceError(f"{root.uri(files[0])}: no ClassLabel names in the 'huggingface' schema metadata") from None
    dataset = ray.data.read_parquet([root.uri(f) for f in files], columns=["image", "label"])
    return dataset.map_batches(_decode, batch_format="pyarrow").materialize(), names


def evaluate_published(real_url: str, synthetic_url: str, out: str | None, epochs: int, seed: int,
                       k: int = 3, copy_fraction: float = 0.1) -> dict[str, Any]:
    from pipeline.plots import class_means, utility_bars
    from synth.metrics import evaluate_images

    train, names = read_split(real_url, "data", "train")
    test, _ = read_split(real_url, "data", "test")
    synthetic, synthetic_names = read_split(synthetic_url, "synthetic", "train")
    if synthetic_names != names:
        raise SourceError(f"{synthetic_url}: class names {synthetic_names} differ from {real_url}'s {names}")
    shape = tuple(train.take(1)[0]["image"].shape)
    evaluation = evaluate_images(train, test, synthetic, shape, len(names), epochs, seed, k=k,
                                 copy_fraction=copy_fraction)
    metrics = {**evaluation.metrics, "feature_extractor_sha256": evaluation.extractor_sha256}
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
