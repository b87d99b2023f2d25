"""The bad-input corpus: every kind of broken input either stops the run with one line that
names the file, row or key (exit status 2, no traceback) or becomes counted rejects with a
reason, and the row accounting holds (rows in = rows out + rows rejected)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.spec import SourceSpec
from tests.conftest import blob_images, png_bytes, write_idx

pytestmark = pytest.mark.integration


def _run(tmp_path, source: dict, *overrides: str) -> int:
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "bad", "run_root": str(tmp_path / "runs"), "source": source,
                                "synthesize": {"enabled": False}, "publish": {"to": str(tmp_path / "out")}}))
    return main(["run", str(spec), *(a for o in overrides for a in ("--set", o))])


def _one_line_error(capsys, status: int) -> str:
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("datakiln: error: ") and "\n" not in err and "Traceback" not in err
    return err


def _idx(tmp_path, **kwargs) -> dict:
    images, labels = blob_images(8)
    image_path, label_path = write_idx(tmp_path, images, labels, **kwargs)
    return {"format": "idx", "path": str(image_path), "labels": str(label_path)}


def _text_file(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


ERRORS = {
    "wrong IDX magic": (lambda t: _idx(t, image_magic=0x802), "images-idx3-ubyte.gz: wrong IDX magic number 0x00000802"),
    "label count mismatch": (lambda t: _idx(t, label_count=5),
                             "labels-idx1-ubyte.gz: label count 5 differs from image count 8"),
    "missing path": (lambda t: {"format": "images", "path": str(t / "nowhere")},
                     "nowhere: image folder: no such file or directory"),
    "empty image folder": (lambda t: os.makedirs(t / "empty") or {"format": "images", "path": str(t / "empty")},
                           "empty: image folder: no files found"),
    "empty CSV file": (lambda t: {"format": "csv", "path": _text_file(t, "empty.csv", b"")},
                       "empty.csv: cannot read csv after row 0: Empty CSV file"),
    "CSV with a header only": (lambda t: {"format": "csv", "path": _text_file(t, "header.csv", b"a,label\n")},
                               "header.csv: the source is empty"),
    "non-UTF-8 CSV": (lambda t: {"format": "csv", "path": _text_file(t, "latin.csv", "city,label\nM\xfcnchen,a\n".encode("latin1"))},
                      "set source.encoding (e.g. latin1)"),
    "label column missing": (lambda t: {"format": "csv", "path": _text_file(t, "nolabel.csv", b"a,b\n1,2\n")},
                             "annotate.label_column: no column 'label'"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_input_that_cannot_run_stops_with_one_line(tmp_path, capsys, case):
    make, message = ERRORS[case]
    err = _one_line_error(capsys, _run(tmp_path, make(tmp_path)))
    assert message in err, err
    assert not (tmp_path / "out").exists()


def _lineage(tmp_path) -> dict:
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    rows = lineage["rows"]
    assert rows["rows_in"] == rows["rows_out"] + rows["rows_rejected"]
    return lineage


def test_broken_files_in_an_image_folder_become_counted_rejects(tmp_path):
    root = tmp_path / "images"
    images, labels = blob_images(20, size=12)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        (root / str(label) / f"{i}.png").write_bytes(png_bytes(image))
    good = png_bytes(images[0])
    (root / "0" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "0" / "zero.png").write_bytes(b"")
    (root / "1" / "notes.txt").write_text("not an image")
    (root / "1" / "gone.png").symlink_to(tmp_path / "deleted.png")  # unreadable: a broken link
    assert _run(tmp_path, {"format": "images", "path": str(root)}, "preprocess.max_reject_fraction=0.5") == 0
    lineage = _lineage(tmp_path)
    assert lineage["rows"]["rows_in"] == 24 and lineage["rows"]["rows_out"] == 20
    assert lineage["rows"]["rejected_by_reason"] == {"decode: undecodable image": 2, "decode: empty file": 1,
                                                     "read: not a regular file": 1}


def test_bad_values_in_a_csv_become_counted_rejects(tmp_path):
    rows = ["age,income,label"] + [f"{20 + i},{1000 + 10 * i},{'a' if i % 2 else 'b'}" for i in range(40)]
    rows += ["30,NaN,a", "31,inf,b", "32,-inf,a", "thirty,1000,a", "33,12k,b", "34,1000,"]
    path = _text_file(tmp_path, "people.csv", ("\n".join(rows) + "\n").encode())
    assert _run(tmp_path, {"format": "csv", "path": path}, "preprocess.max_reject_fraction=0.5") == 0
    lineage = _lineage(tmp_path)
    assert lineage["rows"]["rows_in"] == 46 and lineage["rows"]["rows_out"] == 40
    assert lineage["rows"]["rejected_by_reason"] == {"clean: non-finite number": 3, "clean: not a number": 2,
                                                     "annotate: missing label": 1}
    assert lineage["column_kinds"]["age"] == "numeric" and lineage["column_kinds"]["income"] == "numeric"


def test_a_latin1_csv_runs_once_its_encoding_is_set(tmp_path):
    rows = ["city,size,label"] + [f"{'München' if i % 2 else 'Köln'},{i},{i % 2}" for i in range(30)]
    path = _text_file(tmp_path, "cities.csv", ("\n".join(rows) + "\n").encode("latin1"))
    assert _run(tmp_path, {"format": "csv", "path": path, "encoding": "latin1"}) == 0
    lineage = _lineage(tmp_path)
    assert lineage["rows"]["rows_in"] == 30


SPEC_ERRORS = {
    "a gate typed as a user types it": (["evaluate.gates.tstr_ratio=>= 0.9"], None),
    "an unknown encoding": (["source.encoding=utf-99"], "source.encoding: unknown text encoding 'utf-99'"),
    "a negative seed": (["seed=-1"], "seed: Input should be greater than or equal to 0 (got -1)"),
    "op in with a scalar": (["annotate.labelers=[{type: rules, rules: [{column: a, op: in, value: 3, label: x}]}]"],
                            "op 'in' needs a list of values"),
    "a bad regex": (["annotate.labelers=[{type: rules, rules: [{column: a, op: matches, value: '(', label: x}]}]"],
                    "is not a regex"),
    "a list to compare with": (["annotate.labelers=[{type: rules, rules: [{column: a, op: '>', value: [1], label: x}]}]"],
                               "op '>' needs one number or text"),
}


@pytest.mark.parametrize("case", list(SPEC_ERRORS))
def test_spec_mistakes_stop_with_one_line_before_any_work(tmp_path, capsys, case):
    overrides, message = SPEC_ERRORS[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "bad", "source": {"format": "csv", "path": str(tmp_path)}}))
    status = main(["validate", str(spec), *(a for o in overrides for a in ("--set", o))])
    if message is None:
        assert status == 0
    else:
        assert message in _one_line_error(capsys, status)


def test_rule_values_that_do_not_fit_the_column_stop_with_one_line(tmp_path, capsys):
    rows = ["age,label"] + [f"{20 + i},{'ab'[i % 2] if i % 3 else ''}" for i in range(30)]
    path = _text_file(tmp_path, "people.csv", ("\n".join(rows) + "\n").encode())
    status = _run(tmp_path, {"format": "csv", "path": path},
                  "annotate.labelers=[{type: column}, {type: rules, rules: [{column: age, op: '>', value: old, label: a}]}]",
                  "preprocess.max_reject_fraction=0.9")
    assert "rule 'age > 'old'': the value does not fit column 'age' (int64)" in _one_line_error(capsys, status)


def test_nan_labels_hidden_folders_truncated_idx_and_odd_sides(tmp_path, capsys):
    rows = ["x,label"] + [f"{i},{float(i % 2)}" for i in range(30)] + ["31,NaN", "32,"]
    path = _text_file(tmp_path, "floats.csv", ("\n".join(rows) + "\n").encode())
    assert _run(tmp_path, {"format": "csv", "path": path}, "preprocess.max_reject_fraction=0.5") == 0
    assert _lineage(tmp_path)["rows"]["rejected_by_reason"] == {"annotate: missing label": 2}

    root = tmp_path / "images"
    images, labels = blob_images(16, size=12)
    for i, (image, label) in enumerate(zip(images, labels)):
        for folder in (root / str(label), root / ".ipynb_checkpoints" / str(label), root / str(label) / ".git"):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.png").write_bytes(png_bytes(image))
    (tmp_path / "out").rename(tmp_path / "out-csv")
    assert _run(tmp_path, {"format": "images", "path": str(root)}) == 0
    lineage = _lineage(tmp_path)
    assert lineage["rows"]["rows_in"] == 16 and lineage["class_names"] == ["0", "1"]

    images, labels = blob_images(64, size=10)
    image_path, label_path = write_idx(tmp_path, images, labels)
    spec = tmp_path / "odd.yaml"
    spec.write_text(json.dumps({"name": "odd", "run_root": str(tmp_path / "runs"),
                                "source": {"format": "idx", "path": str(image_path), "labels": str(label_path)},
                                "preprocess": {"ops": [{"op": "decode"}]}, "publish": {"to": str(tmp_path / "odd")}}))
    message = _one_line_error(capsys, main(["run", str(spec)]))
    assert "synthesize.model: 'cvae' needs image sides that are multiples of 4, the images are 10x10" in message

    image_path.write_bytes(image_path.read_bytes()[:-40])  # a gzip stream cut short
    message = _one_line_error(capsys, main(["run", str(spec), "--set", "synthesize.enabled=false"]))
    assert "images-idx3-ubyte.gz: truncated or corrupt IDX file" in message


def _shard(folder, name: str, table) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)


def test_evaluate_on_what_it_cannot_compare_stops_with_one_line(tmp_path, capsys):
    from pipeline.modalities.image import image_schema

    _shard(tmp_path / "table" / "data", "train-00000-of-00001.parquet", pa.table({"age": [1, 2], "label": [0, 1]}))
    message = _one_line_error(capsys, main(["evaluate", "--real", str(tmp_path / "table")]))
    assert "train-00000-of-00001.parquet: no image and label columns (a table dataset?)" in message

    schema = image_schema(["a", "b"])

    def images(*cells):
        return pa.table({"image": [{"bytes": c, "path": None} for c in cells], "label": [0] * len(cells),
                         "label_source": ["given"] * len(cells), "label_confidence": [None] * len(cells),
                         "origin": ["real"] * len(cells), "source_ref": ["x"] * len(cells),
                         "generator": [None] * len(cells)}, schema=schema)
    small, large = png_bytes(np.zeros((8, 8), np.uint8)), png_bytes(np.zeros((12, 12), np.uint8))
    _shard(tmp_path / "junk" / "data", "train-00000-of-00001.parquet", images(small, b"not an image"))
    message = _one_line_error(capsys, main(["evaluate", "--real", str(tmp_path / "junk")]))
    assert "train-00000-of-00001.parquet: row 1: not a decodable image" in message
    _shard(tmp_path / "mixed" / "data", "train-00000-of-00001.parquet", images(small, large))
    message = _one_line_error(capsys, main(["evaluate", "--real", str(tmp_path / "mixed")]))
    assert "row 1: image of 12x12x1, the first is 8x8x1; evaluate needs images of one size" in message


def test_table_columns_of_every_arrow_type_run_or_name_the_key_to_set(tmp_path, capsys):
    import decimal

    n = 40
    table = pa.table({
        "city": pa.array([f"c{i % 3}" for i in range(n)]).dictionary_encode(),
        "price": pa.array([decimal.Decimal(f"{i}.25") for i in range(n)], pa.decimal128(6, 2)),
        "empty": pa.nulls(n),
        "tags": pa.array([[i, i + 1] for i in range(n)]),
        "label": ["ab"[i % 2] for i in range(n)]})
    pq.write_table(table, tmp_path / "typed.parquet")
    source = {"format": "parquet", "path": str(tmp_path / "typed.parquet")}
    message = _one_line_error(capsys, _run(tmp_path, source))
    assert "source.columns.tags: a list<element: int64> column cannot be modelled" in message
    assert "set source.columns.tags: ignore" in message
    assert _run(tmp_path, {**source, "columns": {"tags": "ignore"}}) == 0
    lineage = _lineage(tmp_path)
    assert lineage["column_kinds"] == {"city": "categorical", "price": "numeric", "label": "categorical"}
    assert lineage["rows"]["rows_out"] == n


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_bad_rows_past_the_first_block_become_rejects_not_a_stopped_run(tmp_path, fmt):
    """pyarrow types a file from its first 4 MiB block: text in a number column (or a line
    with the wrong number of fields) further on used to stop the whole run."""
    from pipeline import io as dkio
    from pipeline.sources import tables as readers
    from pipeline.modalities.table import clean_block, target_type
    from synth.tabular import infer_kinds

    good = 200_000
    if fmt == "csv":
        lines = ["age,score,label,note"] + [f"{20 + i % 50},{i % 97}.5,{'ab'[i % 2]},row {i:010d}" for i in range(good)]
        lines += ["thirty,1.5,a,x", "31,2.5,b,y,extra", "32"]
    else:
        lines = [json.dumps({"age": 20 + i % 50, "score": i % 97 + 0.5, "label": "ab"[i % 2]}) for i in range(good)]
        lines += ['{"age": "thirty", "score": 1.5, "label": "a"}', "[31, 2.5]", '{"age": 32,']
    path = tmp_path / f"big.{fmt}"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 4 * 2**20
    root = dkio.resolve(str(path))
    parts = list(readers._read_tables({"path": np.array([root.path], dtype=object)}, root,
                                     SourceSpec(format=fmt, path=str(path))))
    table = pa.concat_tables(parts, promote_options="permissive")
    sample = table.slice(0, 20_000).drop_columns(["source_ref"])
    kinds = infer_kinds(sample.drop_columns([c for c in sample.column_names if c == readers.READ_ERROR]),
                        {"label": "categorical"})
    types = {name: target_type(kind, sample[name]) for name, kind in kinds.items()}
    assert {n: types[n] for n in ("age", "score", "label")} == {"age": pa.int64(), "score": pa.float64(),
                                                                 "label": pa.string()}
    cleaned = clean_block(table, types, list(types))
    reasons = [r for r in cleaned["reject_reason"].to_pylist() if r]
    assert cleaned.num_rows == good + 3 and len(reasons) == 3
    assert "clean: not a number ('thirty' in 'age')" in reasons
    assert sum(r.startswith("read: ") for r in reasons) == 2
