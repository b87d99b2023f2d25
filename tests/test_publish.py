import json
import re

import datasets
import numpy as np
import pyarrow.parquet as pq
import ray.data

from pipeline import io, publish
from pipeline.commit import commit
from pipeline.modalities.image import image_schema, write_split
from tests.conftest import load_published

CLASSES = ["left", "right"]


def _rows(n, origin, start=0):
    rng = np.random.default_rng(start)
    return [{"image": rng.integers(0, 255, (8, 8, 1), dtype=np.uint8), "label": i % 2, "label_source": "given",
             "origin": origin, "source_ref": f"src#{start + i:04d}", "generator": None if origin == "real" else "g1"}
            for i in range(n)]


def _publish(target, rows_per_shard=4, synthetic_start=200):
    schema = image_schema(CLASSES)
    staging = io.resolve(str(target) + ".staging")
    counts = {}
    for split, rows in (("train", _rows(10, "real")), ("test", _rows(3, "real", 100))):
        counts[split] = write_split(ray.data.from_items(rows), staging.join("data"), split, schema, rows_per_shard)
    synthetic = write_split(ray.data.from_items(_rows(6, "synthetic", synthetic_start)), staging.join("synthetic"), "train",
                                    schema, rows_per_shard)
    card = publish.Card(name="t", class_names=CLASSES, split_rows=counts, synthetic_rows=synthetic, schema=schema,
                        metrics={"tstr_accuracy": 0.5})
    with staging.fs.open(staging.join("README.md").path, "w") as handle:
        handle.write(publish.render_card(card))
    commit(staging, io.resolve(str(target)))
    return counts, synthetic


def test_round_trip_with_load_dataset(tmp_path):
    target = tmp_path / "out"
    counts, synthetic = _publish(target)
    assert counts == {"train": 10, "test": 3} and synthetic == 6
    names = sorted(p.name for p in (target / "data").iterdir())
    version = names[0].split("-")[1]  # the data folder's content fingerprint (pipeline.commit)
    assert re.fullmatch(r"[0-9a-f]{12}", version) and names == [
        f"test-{version}-00000-of-00001.parquet", f"train-{version}-00000-of-00003.parquet",
        f"train-{version}-00001-of-00003.parquet", f"train-{version}-00002-of-00003.parquet"]
    real = load_published(str(target), tmp_path=tmp_path)
    assert {s: len(d) for s, d in real.items()} == {"train": 10, "test": 3}
    features = real["train"].features
    assert isinstance(features["image"], datasets.Image)
    assert isinstance(features["label"], datasets.ClassLabel) and features["label"].names == CLASSES
    first = real["train"][0]
    assert first["image"].size == (8, 8) and first["origin"] == "real" and first["source_ref"] == "src#0000"
    assert [r["source_ref"] for r in real["train"]] == [f"src#{i:04d}" for i in range(10)]  # order kept
    fake = load_published(str(target), "synthetic", tmp_path=tmp_path)["train"]
    assert len(fake) == 6 and set(fake["origin"]) == {"synthetic"} and set(fake["generator"]) == {"g1"}
    assert not (tmp_path / "out.staging").exists()


def test_load_dataset_reads_the_current_version_of_a_republished_folder(tmp_path):
    """`datasets` caches a local dataset under its folder's name and its card's configs; the
    fingerprinted shard names give every version, and every folder of the same name, an entry
    of its own."""
    cache = str(tmp_path / "hf-cache")  # one cache for every load, as a user has

    def synthetic_refs(target):
        return datasets.load_dataset(str(target), "synthetic", cache_dir=cache)["train"]["source_ref"]

    _publish(tmp_path / "a" / "out", synthetic_start=200)
    assert synthetic_refs(tmp_path / "a" / "out") == [f"src#{i:04d}" for i in range(200, 206)]
    _publish(tmp_path / "a" / "out", synthetic_start=300)  # republished in place: same sizes, other rows
    assert synthetic_refs(tmp_path / "a" / "out") == [f"src#{i:04d}" for i in range(300, 306)]
    _publish(tmp_path / "b" / "out", synthetic_start=400)  # another folder with the same name
    assert synthetic_refs(tmp_path / "b" / "out") == [f"src#{i:04d}" for i in range(400, 406)]
    real = datasets.load_dataset(str(tmp_path / "a" / "out"), cache_dir=cache)
    assert {split: len(rows) for split, rows in real.items()} == {"train": 10, "test": 3}


def test_features_survive_without_the_card(tmp_path):
    _publish(tmp_path / "out")
    schema = pq.read_schema(next((tmp_path / "out" / "data").glob("test-*-00000-of-00001.parquet")))
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["label"] == {"names": CLASSES, "_type": "ClassLabel"} and features["image"] == {"_type": "Image"}


def test_pixels_survive_png_encoding(tmp_path):
    _publish(tmp_path / "out")
    real = load_published(str(tmp_path / "out"), split="train", tmp_path=tmp_path)
    expected = _rows(10, "real")[3]["image"][:, :, 0]
    assert np.array_equal(np.asarray(real[3]["image"]), expected)
