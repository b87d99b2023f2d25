"""Tables in Parquet, CSV or JSONL files (one file, a folder or a glob), read in blocks.

Files are fanned out over the cluster; each task streams its file in record batches, so a
large file never sits whole in memory. Each row keeps `source_ref = <file URI>#<row>`.
When the table holds images (`source.image_column`: encoded bytes or a HF `{bytes, path}`
struct), that column becomes `image_bytes` for the image operators.
"""

from __future__ import annotations

import io as io_text
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from pipeline import io
from pipeline.errors import SourceError
from pipeline.sources.base import Collected, paths_dataset
from pipeline.spec import SourceSpec

ROWS_PER_BATCH = 8192
CSV_NULLS = ["", "NA", "N/A", "n/a", "NULL", "null", "#N/A", "#NA", "None"]
"""CSV cells read as missing values. NaN is not one of them: like ±inf it is a non-finite
number, and the row is rejected with that reason rather than silently emptied."""
_SUFFIXES = {"parquet": (".parquet", ".pq"), "csv": (".csv", ".csv.gz", ".tsv", ".tsv.gz"),
             "jsonl": (".jsonl", ".json", ".jsonl.gz")}


READ_ERROR = "read_error"
"""Column of the rows a reader could not take (a CSV line with the wrong number of fields,
a JSONL line that is not a JSON object): their reject reason; their other columns are null."""


def _record_batches(fmt: str, handle, spec: SourceSpec, bad: list[str]) -> Iterator[pa.RecordBatch]:
    """The file's rows in batches. CSV and JSONL tables are read as text (typed later, per
    value: text in a number column rejects that row, wherever it is); lines that cannot be
    rows go to `bad` as reject reasons."""
    if fmt == "parquet":
        yield from pq.ParquetFile(handle).iter_batches(batch_size=ROWS_PER_BATCH)
    elif fmt == "csv":
        yield from _csv_batches(handle, spec, bad)
    elif spec.kind != "image":
        yield from _jsonl_batches(handle, bad)
    else:  # a table of images: binary columns need pyarrow's own JSON types
        yield from pyarrow.json.open_json(handle, read_options=pyarrow.json.ReadOptions(block_size=1 << 22))


def _csv_batches(handle, spec: SourceSpec, bad: list[str]) -> Iterator[pa.RecordBatch]:
    def invalid(row) -> str:
        bad.append(f"read: wrong number of fields ({row.actual_columns} instead of {row.expected_columns}: "
                   f"{row.text[:60]!r})")
        return "skip"

    options = pyarrow.csv.ReadOptions(block_size=1 << 22, encoding=spec.encoding)
    quoting = spec.quoting if spec.quoting is not None else spec.delimiter != "\t"
    dialect = {"delimiter": spec.delimiter, "quote_char": '"' if quoting else False}
    header_only = pyarrow.csv.ParseOptions(invalid_row_handler=lambda row: "skip", **dialect)
    names = pyarrow.csv.open_csv(handle, read_options=options, parse_options=header_only).schema.names
    handle.seek(0)
    parse = pyarrow.csv.ParseOptions(invalid_row_handler=invalid, **dialect)
    convert = pyarrow.csv.ConvertOptions(null_values=CSV_NULLS, strings_can_be_null=True,
                                         column_types={name: pa.string() for name in names})
    yield from pyarrow.csv.open_csv(handle, read_options=options, parse_options=parse, convert_options=convert)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, sort_keys=True)  # nested values stay readable text


def _jsonl_batches(handle, bad: list[str]) -> Iterator[pa.RecordBatch]:
    lines = io_text.TextIOWrapper(handle, encoding="utf-8", errors="strict", newline="")
    records: list[dict[str, str | None]] = []
    names: dict[str, None] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as err:
            bad.append(f"read: not JSON (line {number}: {err.msg})")
            continue
        if not isinstance(value, dict):
            bad.append(f"read: not a JSON object (line {number})")
            continue
        names.update(dict.fromkeys(value))
        records.append({k: _as_text(v) for k, v in value.items()})
        if len(records) == ROWS_PER_BATCH:
            yield pa.RecordBatch.from_pydict({n: pa.array([r.get(n) for r in records], pa.string()) for n in names})
            records = []
    if records:
        yield pa.RecordBatch.from_pydict({n: pa.array([r.get(n) for r in records], pa.string()) for n in names})


def _check_text(table: pa.Table, uri: str, row: int, image_column: str) -> None:
    """pyarrow reads text that is not valid UTF-8 as bytes: name the column and the fix."""
    for name, column in zip(table.column_names, table.columns):
        if name != image_column and pa.types.is_binary(column.type):
            raise SourceError(f"{uri}: column '{name}' is not UTF-8 text (rows {row}-{row + table.num_rows}); "
                              "set source.encoding (e.g. latin1)")


def _image_bytes(column: pa.Array) -> pa.Array:
    if pa.types.is_struct(column.type):
        return column.field("bytes")
    return column


def _read_tables(batch: dict[str, np.ndarray], root: io.Location, spec: SourceSpec) -> Iterator[pa.Table]:
    fmt, image_column = spec.format, spec.image_column
    for path in batch["path"]:
        uri, ref = root.uri(path), root.ref(path)
        row = 0
        bad: list[str] = []
        try:
            with root.fs.open(path, "rb", compression="infer") as handle:
                for record_batch in _record_batches(fmt, handle, spec, bad):
                    table = pa.Table.from_batches([record_batch])
                    if fmt == "csv":
                        _check_text(table, uri, row, image_column)
                    if image_column in table.column_names:
                        index = table.column_names.index(image_column)
                        table = table.set_column(index, "image_bytes", _image_bytes(table.column(image_column).combine_chunks()))
                    refs = pa.array([f"{ref}#{i}" for i in range(row, row + table.num_rows)], pa.string())
                    row += table.num_rows
                    yield table.append_column("source_ref", refs)
                    if bad:
                        yield _unreadable(bad, ref, row)
                        bad.clear()
            if bad:
                yield _unreadable(bad, ref, row)
        except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as err:
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            hint = "; set source.encoding (e.g. latin1)" if fmt == "csv" and "UTF8" in detail.replace("-", "") else ""
            raise SourceError(f"{uri}: cannot read {fmt} after row {row}: {detail}{hint}") from None


def _unreadable(reasons: list[str], ref: str, after_row: int) -> pa.Table:
    """Rows for lines that could not be read: a reference, the reason, nothing else."""
    refs = [f"{ref}#unreadable-{after_row}-{i}" for i in range(len(reasons))]
    return pa.table({"source_ref": pa.array(refs, pa.string()), READ_ERROR: pa.array(list(reasons), pa.string())})


def read(spec: SourceSpec) -> Collected:
    root = io.require_exists(spec.path, f"{spec.format} source", spec.storage_options)
    files = io.list_files(root, _SUFFIXES[spec.format] if root.fs.isdir(root.path) else None)
    paths = list(files)
    if not paths:
        raise SourceError(f"{spec.path}: no {spec.format} files found")
    dataset = paths_dataset(paths, per_block=1).map_batches(
        _read_tables,
        fn_kwargs={"root": root, "spec": spec},
        batch_size=1,
        batch_format="numpy",
    )
    if spec.limit:
        dataset = dataset.limit(spec.limit)
    return Collected(dataset=dataset, fingerprints=[io.fingerprint(root, files)])
