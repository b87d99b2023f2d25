"""Fuzzing the bad-input paths with hypothesis: spec overrides of wrong types and ranges;
truncated, byte-flipped and re-typed CSV, JSONL, PNG and IDX inputs, at the level where a
case is cheap (spec building, the source readers and row operators on one batch, the CLI's
error path), then a few dozen whole `datakiln run`s on the shared Ray. Every case ends in a
result, a one-line `DatakilnError` or counted rejects: never another exception, never a hang,
and rows in = rows out + rows rejected whenever a run succeeds."""

from __future__ import annotations

import gzip
import json
import random
import struct

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import io, ops
from pipeline.cli import main
from pipeline.errors import DatakilnError
from pipeline.ops.base import REJECT_REASON
from pipeline.sources import idx, tables
from pipeline.spec import SourceSpec, Spec, build_spec
from tests.conftest import blob_images, png_bytes

CASES = {"spec": 500, "csv": 200, "jsonl": 120, "png": 200, "idx": 100, "cli": 60}
def fuzz(kind: str) -> settings:
    return settings(max_examples=CASES[kind], deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
tried: dict[str, int] = {}


def _count(kind: str) -> None:
    tried[kind] = tried.get(kind, 0) + 1


def _one_line(error: BaseException) -> None:
    assert isinstance(error, DatakilnError), repr(error)
    assert str(error) and "\n" not in str(error).strip() and "Traceback" not in str(error)


def _key_paths(model=Spec, prefix: str = "") -> list[str]:
    """Every key path of the spec tree (sections and their fields)."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            paths += _key_paths(annotation, f"{path}.")
    return paths


KEYS = _key_paths() + ["annotate.label_quality.action", "annotate.labelers.0.type", "annotate.labelers.0.rules",
                       "preprocess.ops.0.op", "preprocess.ops.1.size", "evaluate.gates.tstr_ratio",
                       "evaluate.gates.fid", "synthesize.conditions.y", "source.storage_options.key"]
VALUES = st.one_of(
    st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from([">= 0.9", "<= 3", "== 0", ">=", "[", "{a: ", "[1, 2", "null", "~", "-1", "0", "1e309", "true",
                     "yes", "{op: resize}", "[{op: dedupe}]", "'unclosed", "\t", "é", "\x00", "*", "&a", "!!python/object:os.system"]),
    st.text(max_size=20),
)


@fuzz("spec")
@given(base=st.sampled_from(["sklearn", "csv", "idx", "images"]),
       overrides=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_spec_overrides_give_a_spec_or_one_line(base, overrides):
    _count("spec")
    raw = {"name": "fuzz", "source": {"format": base, "path": "x", "labels": "y"}}
    try:
        build_spec(raw, overrides=[f"{k}={v}" for k, v in overrides])
    except DatakilnError as error:
        _one_line(error)


CSV = b"age,income,city,label\n" + b"".join(f"{20 + i},{1000.5 + i},c{i % 3},{'ab'[i % 2]}\n".encode()
                                           for i in range(30))


def _mutate(data: bytes, draw_ops) -> bytes:
    out = bytearray(data)
    for kind, position, byte in draw_ops:
        if not out:
            break
        at = position % len(out)
        if kind == "flip":
            out[at] = byte
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([byte]) * 3
        else:  # "retype": a number becomes text
            out[at:at] = b"x,"
    return bytes(out)


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "retype"]), st.integers(0, 10**6),
                               st.integers(0, 255)), min_size=1, max_size=4)


def _read_table_file(tmp_path, fmt: str, content: bytes, encoding: str = "utf8") -> list[pa.Table]:
    path = tmp_path / f"t.{fmt}"
    path.write_bytes(content)
    root = io.resolve(str(path))
    return list(tables._read_tables({"path": np.array([root.path], dtype=object)}, root,
                                    SourceSpec(format=fmt, path=str(path), encoding=encoding)))


def _clean_all(parts: list[pa.Table]) -> None:
    """Clean the read rows as a table run does: every row kept or rejected with a reason."""
    from pipeline.modalities.table import clean_block, target_type
    from synth.tabular import infer_kinds

    parts = [p for p in parts if p.num_rows]
    if not parts:
        return
    table = pa.concat_tables(parts, promote_options="permissive")
    try:
        kinds = infer_kinds(table.drop_columns(["source_ref"]))
    except ValueError:
        return  # a column type the table models cannot take: the run refuses it (see test_bad_input)
    types = {n: target_type(k, table[n]) for n, k in kinds.items()}
    cleaned = clean_block(table, types, list(types))
    assert cleaned.num_rows == table.num_rows
    reasons = cleaned[REJECT_REASON].to_pylist()
    assert all(isinstance(r, str) for r in reasons)


@fuzz("csv")
@given(mutations=MUTATIONS, encoding=st.sampled_from(["utf8", "latin1"]))
def test_broken_csv_is_read_or_refused_with_one_line(tmp_path_factory, mutations, encoding):
    _count("csv")
    try:
        _clean_all(_read_table_file(tmp_path_factory.mktemp("csv"), "csv", _mutate(CSV, mutations), encoding))
    except DatakilnError as error:
        _one_line(error)


JSONL = b"".join(json.dumps({"age": 20 + i, "score": 0.5 * i, "city": f"c{i % 3}", "label": "ab"[i % 2]}).encode()
                 + b"\n" for i in range(30))


@fuzz("jsonl")
@given(mutations=MUTATIONS)
def test_broken_jsonl_is_read_or_refused_with_one_line(tmp_path_factory, mutations):
    _count("jsonl")
    try:
        _clean_all(_read_table_file(tmp_path_factory.mktemp("jsonl"), "jsonl", _mutate(JSONL, mutations)))
    except DatakilnError as error:
        _one_line(error)


PNGS = [png_bytes(image) for image in blob_images(4, size=12)[0]] + [png_bytes(
    np.zeros((12, 12, 3), np.uint8), "JPEG")]


@fuzz("png")
@given(which=st.integers(0, len(PNGS) - 1), mutations=MUTATIONS)
def test_broken_images_become_rejects_with_a_reason(which, mutations):
    _count("png")
    row_ops, _ = ops.split_ops([{"op": "decode"}, {"op": "color", "mode": "L"}, {"op": "resize", "size": 12}])
    fused = ops.FusedRowOps(row_ops, ops.ImageShape(12, 12, 1))
    values = [PNGS[0], _mutate(PNGS[which], mutations), b""]
    out = fused({"image_bytes": np.array(values, dtype=object), "source_ref": np.array(["a", "b", "c"], dtype=object)})
    reasons = list(out[REJECT_REASON])
    assert reasons[0] == "" and reasons[2] == "decode: empty file" and len(reasons) == 3
    assert out["image"].shape == (3, 12, 12, 1)


def _idx_pair(tmp_path, mutate_images: bytes | None) -> tuple[io.Location, io.Location]:
    images, labels = blob_images(8)
    raw = struct.pack(">IIII", idx.IMAGES_MAGIC, 8, 12, 12) + images.tobytes()
    image_path, label_path = tmp_path / "i.gz", tmp_path / "l.gz"
    image_path.write_bytes(mutate_images if mutate_images is not None else gzip.compress(raw))
    label_path.write_bytes(gzip.compress(struct.pack(">II", idx.LABELS_MAGIC, 8) + labels.astype(np.uint8).tobytes()))
    return io.resolve(str(image_path)), io.resolve(str(label_path))


IDX_GZ = gzip.compress(struct.pack(">IIII", 0x803, 8, 12, 12) + blob_images(8)[0].tobytes())


@fuzz("idx")
@given(mutations=MUTATIONS)
def test_broken_idx_files_are_refused_with_one_line(tmp_path_factory, mutations):
    _count("idx")
    images, labels = _idx_pair(tmp_path_factory.mktemp("idx"), _mutate(IDX_GZ, mutations))
    try:
        count, rows, cols = idx.read_header(images, idx.IMAGES_MAGIC, 3)
        if count * rows * cols > 10**7:
            return
        idx._read_range({"id": np.arange(min(count, 8))}, images, labels, (rows, cols))
    except DatakilnError as error:
        _one_line(error)


SPEC_TEXT = json.dumps({"name": "fuzz", "source": {"format": "sklearn"}, "synthesize": {"epochs": 2},
                        "evaluate": {"gates": {"tstr_ratio": ">= 0.9"}}}, indent=1).encode()


@fuzz("cli")
@given(mutations=MUTATIONS)
def test_a_broken_spec_file_gives_exit_2_and_one_line(tmp_path_factory, capsys, mutations):
    _count("cli")
    path = tmp_path_factory.mktemp("cli") / "spec.yaml"
    path.write_bytes(_mutate(SPEC_TEXT, mutations))
    status = main(["validate", str(path)])
    captured = capsys.readouterr()
    assert status in (0, 2), captured.err
    if status == 2:
        assert captured.err.startswith("datakiln: error: ") and captured.err.count("\n") == 1


RUNS = 24


@pytest.mark.integration
def test_whole_runs_on_broken_inputs_end_in_a_dataset_or_one_line(tmp_path, capsys):
    """A few dozen runs on one shared Ray: broken CSV and image folders (drawn with a fixed
    seed from the mutations above) publish with exact accounting or stop with one line."""
    rng = random.Random(7)
    outcomes, reasons = {"published": 0, "refused": 0}, []
    for case in range(RUNS):
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        mutations = [(rng.choice(["flip", "cut", "insert", "retype"]), rng.randrange(10**6), rng.randrange(256))
                     for _ in range(rng.randint(1, 3))]
        if case % 2:
            path = folder / "t.csv"
            path.write_bytes(_mutate(CSV * 2 if case % 4 == 1 else CSV, mutations))
            source = {"format": "csv", "path": str(path)}
        else:
            images, labels = blob_images(12, size=12, seed=case)
            for i, (image, label) in enumerate(zip(images, labels)):
                (folder / "img" / str(label)).mkdir(parents=True, exist_ok=True)
                content = png_bytes(image)
                (folder / "img" / str(label) / f"{i}.png").write_bytes(_mutate(content, mutations) if i < 3 else content)
            source = {"format": "images", "path": str(folder / "img")}
        spec = folder / "spec.yaml"
        spec.write_text(json.dumps({"name": f"fuzz{case}", "run_root": str(folder / "runs"), "source": source,
                                    "preprocess": {"max_reject_fraction": 0.5}, "synthesize": {"enabled": False},
                                    "publish": {"to": str(folder / "out")}}))
        status = main(["run", str(spec)])
        err = capsys.readouterr().err
        assert "Traceback" not in err and status in (0, 2), err
        if status == 0:
            rows = json.loads((folder / "out" / "lineage.json").read_text())["rows"]
            assert rows["rows_in"] == rows["rows_out"] + rows["rows_rejected"] + rows["pending_review"]
            outcomes["published"] += 1
        else:
            assert err.startswith("datakiln: error: ") and err.count("\n") == 1, err
            outcomes["refused"] += 1
            reasons.append(err.strip().rsplit(str(folder), 1)[-1][-90:])
    tried["run"] = RUNS
    print(f"fuzz: {sum(tried.values())} cases tried ({tried}); whole runs: {outcomes}; refusals: {reasons}")
    assert outcomes["published"] > 0
