"""S3 end to end against a local moto server (started here, on loopback), with the real s3fs
client: images read from one bucket, the dataset published to another, read back by
`datasets.load_dataset`; credentials never reach lineage or the card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import build_spec, run
from tests.conftest import blob_images, png_bytes

pytestmark = pytest.mark.integration

SECRET = "moto-secret-never-logged"


@pytest.fixture(scope="module")
def s3(moto_endpoint):
    options = {"endpoint_url": moto_endpoint, "key": "testing", "secret": SECRET}
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    for bucket in ("raw-images", "datasets"):
        fs.mkdir(bucket)
    return fs, options


def test_images_from_s3_publish_to_another_bucket(s3, tmp_path, monkeypatch):
    fs, options = s3
    images, labels = blob_images(60, size=16)
    for i, (image, label) in enumerate(zip(images, labels)):
        fs.pipe(f"raw-images/digits/{'left' if label == 0 else 'right'}/{i:03d}.png", png_bytes(image))
    fs.pipe("raw-images/digits/left/broken.png", b"\x89PNG\r\n\x1a\n truncated")
    spec = build_spec({
        "name": "s3", "run_root": str(tmp_path / "runs"),
        "source": {"format": "images", "path": "s3://raw-images/digits", "storage_options": options},
        "synthesize": {"enabled": False},
        "publish": {"to": "s3://datasets/digits", "storage_options": options}})
    report = run(spec)
    assert report.target == "s3://datasets/digits"
    rows = report.lineage["rows"]
    assert rows["rows_in"] == 61 and rows["rows_rejected"] == 1 and rows["rows_out"] == 60
    assert rows["rejected_by_reason"] == {"decode: undecodable image": 1}
    assert len(fs.glob("datasets/digits/data/train-*-00000-of-00001.parquet")) == 1  # a new name per version
    assert not fs.exists("datasets/digits.staging-" + report.lineage["run_id"])  # committed, not left staged

    import datasets

    # the session runs HF offline (no hub); this bucket is the loopback moto server
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    files = {split: f"s3://datasets/digits/data/{split}-*.parquet" for split in ("train", "test")}
    loaded = datasets.load_dataset("parquet", data_files=files, storage_options=dict(options),  # it adds keys
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert loaded["train"].num_rows + loaded["test"].num_rows == 60
    assert loaded["train"].features["label"].names == ["left", "right"]
    first = loaded["train"][0]
    assert first["source_ref"].startswith(("left/", "right/")) and first["image"].size == (16, 16)
    expected = {f"{'left' if lab == 0 else 'right'}/{i:03d}.png": img
                for i, (img, lab) in enumerate(zip(images, labels))}
    assert np.array_equal(np.asarray(first["image"]), expected[first["source_ref"]])  # lossless through S3

    for name in ("lineage.json", "README.md"):
        text = fs.cat(f"datasets/digits/{name}").decode()
        assert SECRET not in text
    lineage = json.loads(fs.cat("datasets/digits/lineage.json"))
    assert lineage["spec"]["source"]["storage_options"] == {**options, "key": "***", "secret": "***"}
    assert lineage["inputs"][0]["url"] == "s3://raw-images/digits" and lineage["inputs"][0]["files"] == 61
