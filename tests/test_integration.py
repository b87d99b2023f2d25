"""Whole specs end to end on the session's real local Ray."""

import json

import datasets
import numpy as np
import pytest

from pipeline import build_spec, load_spec, run
from pipeline.cli import main
from pipeline.errors import GateError
from pipeline.gates import IMAGE_METRICS
from tests.conftest import MNIST_IMAGES, MNIST_LABELS, ROOT, blob_images, load_published, needs_shared, png_bytes

pytestmark = pytest.mark.integration


@needs_shared
def test_mnist_subset_end_to_end(tmp_path):
    spec = load_spec(str(ROOT / "examples" / "mnist.yaml"), [
        f"source.path={MNIST_IMAGES}", f"source.labels={MNIST_LABELS}", "source.limit=1500",
        "synthesize.epochs=2", "synthesize.samples_per_class=12", "synthesize.options.width=16",
        "evaluate.classifier_epochs=3",
        f"publish.to={tmp_path / 'out'}", f"run_root={tmp_path / 'runs'}", "publish.rows_per_shard=500",
    ])
    report = run(spec)
    out = tmp_path / "out"

    real = load_published(str(out), tmp_path=tmp_path)
    per_class = np.bincount(list(real["train"]["label"]) + list(real["test"]["label"]), minlength=10)
    assert len(real["test"]) == sum(round(n * 0.2) for n in per_class)  # exact per class
    assert len(real["train"]) + len(real["test"]) == 1500
    assert real["train"].features["label"].names == [str(i) for i in range(10)]
    assert isinstance(real["train"].features["image"], datasets.Image)
    assert real["train"][0]["image"].size == (28, 28)
    assert real["train"][0]["source_ref"].startswith("t10k-images-idx3-ubyte.gz#")  # relative: no local path
    assert len(list((out / "data").glob("train-*-of-00003.parquet"))) == 3
    synthetic = load_published(str(out), "synthetic", tmp_path=tmp_path)["train"]
    assert len(synthetic) == 120 and sorted(set(synthetic["label"])) == list(range(10))
    assert set(synthetic["origin"]) == {"synthetic"} and synthetic[0]["generator"].startswith("cvae-")

    for name in ("README.md", "metrics.json"):  # published where others read it: no local path of this machine
        assert str(tmp_path) not in (out / name).read_text() and "/tmp/" not in (out / name).read_text()
    lineage = json.loads((out / "lineage.json").read_text())
    rows = lineage["rows"]
    assert rows["rows_in"] == 1500 and rows["rows_out"] + rows["rows_rejected"] == rows["rows_in"]
    assert lineage["spec_hash"] == spec.spec_hash() and lineage["spec"]["source"]["limit"] == 1500
    assert len(lineage["checkpoint"]["sha256"]) == 64 and lineage["inputs"][0]["method"] == "content"
    assert {"collect", "preprocess", "train", "sample", "evaluate", "publish"} <= set(lineage["timings_s"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(IMAGE_METRICS) <= set(metrics) and len(metrics["tstr_per_class_recall"]) == 10
    assert metrics["trtr_accuracy"] > 0.5  # one epoch of the fixed CNN on 1,200 real digits
    assert metrics["fid_domain"] > metrics["fid_domain_floor"]  # 2 epochs of cVAE are far from real
    assert metrics["nn_copy_fraction"] == 0.0 and len(lineage["checkpoint"]["feature_extractor_sha256"]) == 64
    for plot in ("samples.png", "utility.png", "class_means.png"):
        assert (out / plot).stat().st_size > 1000
    assert "config_name: synthetic" in (out / "README.md").read_text()
    assert report.target.endswith("out")


def test_a_failing_gate_publishes_nothing(tmp_path):
    spec = load_spec(str(ROOT / "examples" / "demo.yaml"), [
        "source.limit=400", "synthesize.epochs=1", "synthesize.samples_per_class=8", "evaluate.classifier_epochs=1",
        "evaluate.gates={precision: '>= 1.01', nn_copy_fraction: '== 0'}", f"publish.to={tmp_path / 'out'}",
        f"run_root={tmp_path / 'runs'}"])
    with pytest.raises(GateError) as failure:
        run(spec)
    message = str(failure.value)
    assert message.startswith("evaluate.gates failed: precision = ") and "(needs >= 1.01)" in message
    assert "nn_copy_fraction" not in message  # that gate passed
    assert not (tmp_path / "out").exists()
    candidate = next((tmp_path / "runs").glob("*/*/candidate"))
    assert (candidate / "metrics.json").exists() and list((candidate / "synthetic").glob("train-*.parquet"))


def test_evaluate_command_compares_published_datasets(tmp_path, capsys):
    spec = load_spec(str(ROOT / "examples" / "demo.yaml"), [
        "source.limit=400", "synthesize.epochs=1", "synthesize.samples_per_class=8", "evaluate.enabled=false",
        "evaluate.gates={}", f"publish.to={tmp_path / 'out'}", f"run_root={tmp_path / 'runs'}"])
    run(spec)
    assert not (tmp_path / "out" / "metrics.json").read_text().strip("{}\n ")  # nothing evaluated in the run
    assert main(["evaluate", "--real", str(tmp_path / "out"), "--out", str(tmp_path / "report"), "--epochs", "1"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(IMAGE_METRICS) <= set(metrics) and (tmp_path / "report" / "utility.png").exists()
    assert "tstr_accuracy: " in capsys.readouterr().out


@pytest.mark.parametrize("model", ["cgan"])  # cvae: the modality conformance suite (tests/test_modalities.py)
def test_same_spec_and_seed_give_byte_identical_synthetic_shards(tmp_path, model):
    shards = []
    for copy in ("a", "b"):
        spec = load_spec(str(ROOT / "examples" / "demo.yaml"), [
            "source.limit=300", f"synthesize.model={model}", "synthesize.epochs=2", "synthesize.samples_per_class=6",
            "synthesize.latent_dim=null", "evaluate.enabled=false", "evaluate.gates={}", f"publish.to={tmp_path / copy}",
            f"run_root={tmp_path / ('runs-' + copy)}"])
        run(spec)
        shards.append(sorted((tmp_path / copy / "synthetic").glob("*.parquet")))
    assert [p.name for p in shards[0]] == [p.name for p in shards[1]] and shards[0]
    for a, b in zip(*shards):
        assert a.read_bytes() == b.read_bytes()


def _image_folder(root, n=40):
    images, labels = blob_images(n, size=16)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("left" if label == 0 else "right")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(png_bytes(image))
    (root / "left" / "dup.png").write_bytes(png_bytes(images[0]))  # exact duplicate of 000.png
    (root / "left" / "truncated.png").write_bytes(png_bytes(images[2])[:50])
    (root / "right" / "empty.png").write_bytes(b"")
    (root / "right" / "notes.txt").write_text("not an image")
    return n + 4


def _folder_spec(tmp_path, target, **extra):
    raw = {"name": "folder", "run_root": str(tmp_path / "runs"), "source": {"format": "images", "path": str(tmp_path / "imgs")},
           "synthesize": {"enabled": False}, "publish": {"to": str(target)}, **extra}
    return build_spec(raw)


def test_image_folder_rejects_are_accounted_and_reproducible(tmp_path):
    total = _image_folder(tmp_path / "imgs")
    report = run(_folder_spec(tmp_path, tmp_path / "a", preprocess={"max_reject_fraction": 0.2}))
    rows = report.lineage["rows"]
    assert rows["rows_in"] == total and rows["rows_rejected"] == 4 and rows["rows_out"] == total - 4
    assert rows["rejected_by_reason"] == {"decode: undecodable image": 2, "decode: empty file": 1, "dedup: duplicate": 1}
    rejects = load_published("parquet", data_files=f"{report.run_dir}/rejects/*.parquet", tmp_path=tmp_path)["train"]
    assert any(r["reason"].startswith("dedup: duplicate of ") and r["source_ref"].endswith("dup.png") for r in rejects)
    real = load_published(str(tmp_path / "a"), tmp_path=tmp_path)
    assert real["train"].features["label"].names == ["left", "right"] and len(real["test"]) == 8

    run(_folder_spec(tmp_path, tmp_path / "b", preprocess={"max_reject_fraction": 0.2}))
    for split in ("train", "test"):  # the same content: the same fingerprinted names
        shard = next((tmp_path / "a" / "data").glob(f"{split}-*-00000-of-00001.parquet")).name
        assert (tmp_path / "a" / "data" / shard).read_bytes() == (tmp_path / "b" / "data" / shard).read_bytes()


def test_too_many_rejects_fail_the_run_and_publish_nothing(tmp_path):
    _image_folder(tmp_path / "imgs")
    with pytest.raises(GateError, match=r"preprocess.max_reject_fraction: 4/44 rows rejected \(9.1% > 5.0%\)"):
        run(_folder_spec(tmp_path, tmp_path / "out", preprocess={"max_reject_fraction": 0.05}))
    assert not (tmp_path / "out").exists()


def _photo_folder(root, n=48, size=24, classes=("red", "blue")):
    """RGB photos-to-be: a coloured square on noise; in class folders, or at the root with `classes=()`."""
    rng = np.random.default_rng(1)
    for i in range(n):
        image = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
        image[4:size - 4, 4:size - 4, i % 2 * 2] = rng.integers(160, 255)  # red (0) or blue (2) square
        folder = root / classes[i % 2] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(png_bytes(image))


def _tiny_photos_overrides(tmp_path, photos):
    return [f"source.path={photos}", "synthesize.epochs=1", "synthesize.batch_size=16", "synthesize.samples_per_class=10",
            "synthesize.sample_steps=2", "synthesize.options.width=8", "evaluate.classifier_epochs=1",
            f"publish.to={tmp_path / 'out'}", f"run_root={tmp_path / 'runs'}"]


def test_the_photos_spec_resized_to_64_runs_end_to_end(tmp_path):
    _photo_folder(tmp_path / "photos")
    spec = load_spec(str(ROOT / "examples" / "photos.yaml"),
                     _tiny_photos_overrides(tmp_path, tmp_path / "photos") + ["preprocess.ops.2.size=64"])
    run(spec)
    real = load_published(str(tmp_path / "out"), tmp_path=tmp_path)
    synthetic = load_published(str(tmp_path / "out"), "synthetic", tmp_path=tmp_path)["train"]
    for image in (real["train"][0]["image"], synthetic[0]["image"]):
        assert image.size == (64, 64) and image.mode == "RGB"
    assert len(synthetic) == 20 and synthetic[0]["generator"].startswith("cflow-")
    assert real["train"].features["label"].names == ["blue", "red"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0 <= metrics["trtr_accuracy"] <= 1 and metrics["fid_domain_floor"] >= 0
    assert "augment_gain" not in metrics and "tstr_macro_f1" in metrics  # the spec's evaluate.augment: false
    assert "`augment_gain` (the classifier trained on real + synthetic) was not computed" in (
        tmp_path / "out" / "README.md").read_text()


def test_an_unlabelled_folder_publishes_an_unconditional_synthetic_config(tmp_path):
    _photo_folder(tmp_path / "photos", classes=())
    spec = load_spec(str(ROOT / "examples" / "photos.yaml"), _tiny_photos_overrides(tmp_path, tmp_path / "photos"))
    report = run(spec)
    out = tmp_path / "out"
    real = load_published(str(out), tmp_path=tmp_path)
    synthetic = load_published(str(out), "synthetic", tmp_path=tmp_path)["train"]
    assert "label" not in real["train"].features and "label" not in synthetic.features
    assert len(real["train"]) + len(real["test"]) == 48 and len(synthetic) == 10
    assert synthetic[0]["image"].size == (32, 32) and set(synthetic["origin"]) == {"synthetic"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"fid_domain", "fid_domain_floor", "precision", "recall", "density", "coverage", "nn_copy_fraction"} <= set(metrics)
    assert not {"tstr_accuracy", "trtr_accuracy", "is_domain"} & set(metrics)
    card = (out / "README.md").read_text()
    assert "unconditional-image-generation" in card and "no-annotation" in card and "No labels" in card
    assert "rotated" in card and "utility.png" not in card
    assert report.lineage["annotation"]["unlabelled"] is True and report.lineage["rows"]["rows_rejected"] == 0
