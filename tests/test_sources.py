import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import sources
from pipeline.errors import SourceError
from pipeline.spec import SourceSpec
from tests.conftest import blob_images, png_bytes, write_idx


def _rows(collected):
    return collected.dataset.take_all()


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reads_every_record_in_order(tmp_path, compress):
    images, labels = blob_images(10_000 // 100, size=8)
    image_path, label_path = write_idx(tmp_path, images, labels, compress=compress)
    rows = _rows(sources.read(SourceSpec(format="idx", path=str(image_path), labels=str(label_path))))
    assert len(rows) == len(images)
    for i in (0, 37, len(images) - 1):
        assert np.array_equal(rows[i]["image"], images[i]) and rows[i]["label"] == labels[i]
        assert rows[i]["source_ref"].endswith(f"#{i}")


def test_idx_limit_and_fingerprint(tiny_idx):
    collected = sources.read(SourceSpec(format="idx", path=str(tiny_idx[0]), labels=str(tiny_idx[1]), limit=5))
    assert collected.dataset.count() == 5
    assert collected.fingerprints[0]["method"] == "content" and len(collected.fingerprints[0]["sha256"]) == 64


def test_idx_bad_inputs_name_the_file(tmp_path):
    images, labels = blob_images(8)
    image_path, label_path = write_idx(tmp_path, images, labels, image_magic=0x1234)
    with pytest.raises(SourceError, match=r"images-idx3-ubyte.gz: wrong IDX magic number 0x00001234, expected 0x00000803"):
        sources.read(SourceSpec(format="idx", path=str(image_path), labels=str(label_path)))
    image_path, label_path = write_idx(tmp_path, images, labels, label_count=7)
    with pytest.raises(SourceError, match=r"labels-idx1-ubyte.gz: label count 7 differs from image count 8"):
        sources.read(SourceSpec(format="idx", path=str(image_path), labels=str(label_path)))
    with pytest.raises(SourceError, match=r"missing.gz: IDX images file: no such file or directory"):
        sources.read(SourceSpec(format="idx", path=str(tmp_path / "missing.gz"), labels=str(label_path)))


def test_image_folder_labels_from_class_folders(tmp_path):
    images, labels = blob_images(6)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / ("left" if label == 0 else "right")
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(png_bytes(image))
    (tmp_path / "right" / ".DS_Store").write_bytes(b"junk")
    rows = sorted(_rows(sources.read(SourceSpec(format="images", path=str(tmp_path)))), key=lambda r: r["source_ref"])
    assert len(rows) == 6
    assert {r["label"] for r in rows} == {"left", "right"}
    assert all(r["image_bytes"][:4] == b"\x89PNG" for r in rows)
    assert rows[0]["source_ref"] == "left/0.png"  # relative to the source folder: no local layout leaks


def test_parquet_with_hf_image_struct(tmp_path):
    images, labels = blob_images(5)
    table = pa.table({"image": [{"bytes": png_bytes(im), "path": None} for im in images], "label": labels})
    pq.write_table(table, tmp_path / "part.parquet")
    rows = _rows(sources.read(SourceSpec(format="parquet", path=str(tmp_path))))
    assert [r["label"] for r in rows] == labels.tolist()
    assert rows[2]["image_bytes"] == png_bytes(images[2]) and rows[2]["source_ref"].endswith("part.parquet#2")


def test_csv_and_jsonl_tables_keep_row_refs(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,x\n2,y\n3,z\n")
    rows = _rows(sources.read(SourceSpec(format="csv", path=str(tmp_path / "t.csv"))))
    # read as text; typed per value when the table is cleaned (a stray text rejects one row)
    assert [(r["a"], r["b"]) for r in rows] == [("1", "x"), ("2", "y"), ("3", "z")]
    assert rows[1]["source_ref"].endswith("t.csv#1")
    (tmp_path / "t.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    rows = _rows(sources.read(SourceSpec(format="jsonl", path=str(tmp_path / "t.jsonl"))))
    assert [r["a"] for r in rows] == ["1", "2"]


def test_sklearn_digits_are_real_and_rescaled():
    rows = _rows(sources.read(SourceSpec(format="sklearn", path="digits", limit=20)))
    assert len(rows) == 20
    from sklearn.datasets import load_digits

    digits = load_digits()
    assert np.array_equal(rows[7]["image"], np.rint(digits.images[7] * 255 / 16).astype(np.uint8))
    assert rows[7]["label"] == digits.target[7] and rows[7]["source_ref"] == "sklearn://digits#7"
    with pytest.raises(SourceError, match="unknown bundled dataset 'mnist'; known: digits"):
        sources.read(SourceSpec(format="sklearn", path="mnist"))
