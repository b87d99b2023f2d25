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
from pipeline.commit import data_files
from pipeline.errors import SourceError, SpecError
from synth.metrics import Split, evaluate_images


def _decode(table: pa.Table, uri: str) -> Split:
    images = []
    for row, cell in enumerate(table["image"].to_pylist()):
        try:
            array = np.asarray(Image.open(stdio.BytesIO((cell or {}).get("bytes") or b"")))
        except (OSError, ValueError) as err:
            raise SourceError(f"{uri}: row {row}: not a decodable image ({type(err).__name__})") from None
        array = array[:, :, None] if array.ndim == 2 else array
        if images and array.shape != images[0].shape:
            raise SourceError(f"{uri}: row {row}: image of {array.shape[0]}x{array.shape[1]}x{array.shape[2]}, the "
                              f"first is {'x'.join(map(str, images[0].shape))}; evaluate needs images of one size")
        images.append(array)
    return np.stack(images), table["label"].to_numpy()


def read_split(url: str, folder: str, split: str) -> tuple[Split, list[str]]:
    """A published split as in-memory (images, labels), and its class names.

    Evaluation holds its three sets in memory anyway, so the shards are read and decoded
    here, in shard order, without a Ray Data pass.
    """
    root = io.require_exists(url, "published dataset")
    named = data_files(root).get(("synthetic" if folder == "synthetic" else "default", split))
    files = named if named is not None else sorted(root.fs.glob(root.join(folder, f"{split}-*.parquet").path))
    if not files:
        raise SourceError(f"{url}: no {folder}/{split}-*.parquet shards (is this a datakiln dataset?)")
    parts, names = [], None
    for path in files:
        with root.fs.open(path, "rb") as handle:
            present = pq.read_schema(handle).names
            if "image" not in present or "label" not in present:
                raise SourceError(f"{root.uri(path)}: no image and label columns (a table dataset?); datakiln "
                                  "evaluate compares image datasets: a table run's metrics are in its metrics.json")
            table = pq.read_table(handle, columns=["image", "label"])
        if names is None:
            try:
                names = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
            except (KeyError, TypeError, ValueError):
                raise SourceError(f"{root.uri(path)}: no ClassLabel names in the 'huggingface' schema metadata") from None
        parts.append(_decode(table, root.uri(path)))
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
    shapes = {what: images.shape[1:] for what, (images, _) in (("train", train), ("test", test), ("synthetic", synthetic))}
    if len(set(shapes.values())) > 1:
        raise SourceError(f"{synthetic_url}: image shapes differ between the sets ({shapes}); evaluate needs one size")
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
