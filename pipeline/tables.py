"""Run a table spec: collect → clean → label → split → train (tvae/ctgan) → sample → evaluate → publish.

Cleaning happens per block in Ray Data: every modelled column is cast to the kind inferred
from a bounded sample (or given in `source.columns`); values that do not fit (text in a
number column, NaN/inf) reject the row with a reason, and exact duplicate rows are
rejected like duplicate images. The curated splits then come to the driver, where the
encoder is fitted and the metrics run on whole tables.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from pipeline import io, plots, sources
from pipeline.annotate import TableClassifier, annotate, export_review, needs_classifier, read_human_labels
from pipeline.console import CONSOLE, detail, log
from pipeline.errors import SourceError, SpecError
from pipeline.gates import applicable_gates, failed_gates
from pipeline.ops import registry
from pipeline.ops.base import REJECT_REASON
from pipeline.publish import card_lineage
from pipeline.publish_table import LABEL_COLUMNS, render_table_card, table_schema, write_table_split
from pipeline.sources.tables import READ_ERROR
from pipeline.spec import Spec
from pipeline.split import in_test_split, ref_hashes
from pipeline.stage import stage_folder

INFER_ROWS = 20_000
"""Rows read to infer column kinds."""
NAN_TEXT = pa.array(["NaN", "nan", "NAN"])
"""In a text column these mean a missing value (in a number column they reject the row)."""


def _integral_text(sample: pa.ChunkedArray) -> bool:
    """Text whose values that are numbers are all whole numbers (CSV and JSONL are read as text)."""
    values = pc.drop_null(sample)
    numbers = pc.match_substring_regex(values, r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
    if not pc.any(numbers).as_py():
        return False
    integers = pc.match_substring_regex(values, r"^\s*[-+]?\d+\s*$")
    return pc.all(pc.or_(pc.invert(numbers), integers)).as_py() and pc.max(pc.utf8_length(values)).as_py() < 19


def _target_type(kind: str, sample: pa.ChunkedArray) -> pa.DataType:
    if kind == "numeric":
        if pa.types.is_string(sample.type):
            return pa.int64() if _integral_text(sample) else pa.float64()
        return pa.int64() if pa.types.is_integer(sample.type) else pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "datetime":
        return sample.type if pa.types.is_timestamp(sample.type) else pa.timestamp("s")
    if kind == "id":
        return pa.int64() if pa.types.is_integer(sample.type) else pa.string()
    return pa.string()


def _cast_value(value: Any, arrow_type: pa.DataType) -> tuple[Any, str]:
    """One value in `arrow_type`, or a reject reason."""
    if value is None or value == "":
        return None, ""
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None, f"clean: not a number ({value!r})"
        if not math.isfinite(number):
            return None, f"clean: non-finite number ({value!r})"
        if pa.types.is_integer(arrow_type):
            if number != int(number):
                return None, f"clean: not an integer ({value!r})"
            return int(number), ""
        return number, ""
    if pa.types.is_boolean(arrow_type):
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True, ""
        if text in ("false", "0", "no"):
            return False, ""
        return None, f"clean: not a boolean ({value!r})"
    if pa.types.is_timestamp(arrow_type):
        try:
            return pc.cast(pa.array([str(value)]), arrow_type)[0].as_py(), ""
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None, f"clean: not a date/time ({value!r})"
    return str(value), ""


def _clean(table: pa.Table, types: dict[str, pa.DataType], hashed: list[str]) -> pa.Table:
    """Cast every kept column to its type; a value that does not fit rejects its row (as does
    a line the reader could not take)."""
    unreadable = READ_ERROR in table.column_names
    reasons = [r or "" for r in table[READ_ERROR].to_pylist()] if unreadable else [""] * table.num_rows
    columns = {}
    for name, arrow_type in types.items():
        if name not in table.column_names:
            if not unreadable:
                raise SourceError(f"{table['source_ref'][0].as_py().split('#')[0]}: no column '{name}'")
            columns[name] = pa.nulls(table.num_rows, arrow_type)
            continue
        column = table[name]
        if pa.types.is_floating(column.type) and not pa.types.is_floating(arrow_type):
            column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))  # NaN: missing, not "nan"
        elif pa.types.is_string(column.type) and pa.types.is_string(arrow_type):  # NaN written as text (pandas)
            column = pc.if_else(pc.is_in(column, value_set=NAN_TEXT), pa.scalar(None, pa.string()), column)
        try:  # fast path: Arrow casts the whole column (and checks numbers are finite)
            cast = pc.cast(column, arrow_type)
            if pa.types.is_floating(arrow_type) and not pc.all(pc.is_finite(pc.fill_null(cast, 0.0))).as_py():
                raise pa.ArrowInvalid("non-finite")
            columns[name] = cast
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        values = []
        for i, raw in enumerate(column.to_pylist()):
            value, reason = _cast_value(raw, arrow_type)
            if reason and not reasons[i]:
                reasons[i] = f"{reason[:-1]} in '{name}')" if reason.endswith(")") else reason
            values.append(value)
        columns[name] = pa.array(values, arrow_type)
    cleaned = pa.table(columns)
    digests = [hashlib.blake2b(repr(tuple(row.values())).encode(), digest_size=16).hexdigest()
               for row in cleaned.select(hashed).to_pylist()]
    return cleaned.append_column("source_ref", table["source_ref"]).append_column(
        "content_hash", pa.array(digests, pa.string())).append_column(REJECT_REASON, pa.array(reasons, pa.string()))


def infer_types(spec: Spec, dataset: ray.data.Dataset) -> tuple[dict[str, str], dict[str, pa.DataType]]:
    from synth.tabular import infer_kinds

    sample = dataset.limit(INFER_ROWS).to_arrow_refs()
    tables = [t for t in ray.get(sample) if t.num_rows]
    if not tables:
        raise SourceError(f"{spec.source.path}: the source is empty")
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.drop_columns([c for c in ("source_ref", READ_ERROR) if c in table.column_names])
    for name in spec.source.columns:
        if name not in table.column_names:
            raise SpecError(f"source.columns.{name}: no such column (columns: {', '.join(table.column_names)})")
    target = spec.annotate.label_column
    if target not in table.column_names:
        raise SourceError(f"annotate.label_column: no column '{target}' in {spec.source.path} "
                          f"(columns: {', '.join(table.column_names)})")
    given = {k: v for k, v in spec.source.columns.items() if v != "ignore"}
    table = _modelable(table, spec)
    kinds = infer_kinds(table, {**given, target: "categorical"})
    return kinds, {name: _target_type(kind, table[name]) for name, kind in kinds.items()}


def _modelable(table: pa.Table, spec: Spec) -> pa.Table:
    """The sample with dictionary columns decoded and decimals as floats; columns with no
    value at all are left out (they carry nothing to model); nested or binary columns stop
    the run with the key that ignores them."""
    columns = {}
    for name, column in zip(table.column_names, table.columns):
        kind = column.type
        if spec.source.columns.get(name) == "ignore":
            continue
        if pa.types.is_dictionary(kind):
            column = column.cast(kind.value_type)
        elif pa.types.is_decimal(kind):
            column = column.cast(pa.float64())
        elif pa.types.is_null(kind) or column.null_count == len(column):
            if name != spec.annotate.label_column and name not in spec.source.columns:
                continue
            column = column.cast(pa.string())
        elif pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            raise SpecError(f"source.columns.{name}: a {kind} column cannot be modelled as a table column; "
                            f"set source.columns.{name}: ignore")
        columns[name] = column
    return pa.table(columns)


def run_table(spec: Spec, run_id: str, run_dir: str, spec_hash: str, code_version: dict[str, Any],
              timings: dict[str, float], fresh: bool = False):
    from pipeline.runner import (_put_plot, _timed, account_rejects, base_lineage, finish, publish_locations,
                                 train_generator)

    target_name = spec.annotate.label_column
    with _timed(timings, "collect"):
        collected = sources.read(spec.source)
        kinds, types = infer_types(spec, collected.dataset)
        log("collect", f"{spec.source.path}: {len(kinds)} columns ("
            + ", ".join(f"{k} {list(kinds.values()).count(k)}" for k in dict.fromkeys(kinds.values())) + ")")
        detail("collect", "columns: " + ", ".join(f"{n} ({k})" for n, k in kinds.items()))

    with _timed(timings, "preprocess"):
        key = hashlib.sha256(json.dumps({"source": spec.source.model_dump(mode="json", exclude={"storage_options"}),
                                         "types": {n: str(t) for n, t in types.items()}, "kinds": kinds,
                                         "inputs": collected.fingerprints, "code": code_version},
                                        sort_keys=True).encode()).hexdigest()[:16]
        folder = stage_folder(spec, key)
        if fresh and folder.fs.exists(folder.path):
            folder.fs.rm(folder.path, recursive=True)
        cleaned = _cleaned_stage(collected, types, [n for n, k in kinds.items() if k != "id"], folder)
        reasons = np.array(cleaned[REJECT_REASON].to_pylist(), dtype=object)
        duplicates = registry.build({"op": "dedup"}).decide(cleaned, reasons) if spec.preprocess.dedup_rows else []
        log("preprocess", f"{cleaned.num_rows} rows cast to their column types; "
            f"{len(duplicates)} exact duplicate rows")

    with _timed(timings, "annotate"):
        classifier = TableClassifier(cleaned, kinds, target_name) if needs_classifier(spec.annotate) else None
        annotation = annotate(spec.annotate, cleaned, reasons, cleaned[target_name], read_human_labels(run_dir),
                              classifier, spec.seed)
        class_names = annotation.class_names
        cleaned = _with_annotation(cleaned, annotation, target_name)
        log("annotate", f"target '{target_name}': {annotation.summary()}")
        if len(annotation.review):
            values = cleaned.select(list(types)).take(pa.array(annotation.review)).to_pylist()
            tasks = export_review(run_dir, run_id, cleaned["source_ref"].to_pylist(), annotation, values=values)
            log("annotate", f"{len(annotation.review)} rows to review: import {tasks} into Label Studio, then "
                f"datakiln annotate import {run_dir} EXPORT.json")

    rows_in, rejected_by_reason, pending_review = account_rejects(spec, run_id, run_dir, cleaned["source_ref"],
                                                                  reasons, class_names)

    with _timed(timings, "split"):
        live = reasons == ""
        is_test = in_test_split(ref_hashes(cleaned["source_ref"].to_pylist()), annotation.label, live, spec.seed,
                                spec.split.test_fraction)
        columns = list(types) + [c for c in LABEL_COLUMNS if c in cleaned.column_names] + ["source_ref"]
        frames = {"train": cleaned.select(columns).filter(pa.array(live & ~is_test)),
                  "test": cleaned.select(columns).filter(pa.array(live & is_test))}
        log("split", f"train {frames['train'].num_rows}, test {frames['test'].num_rows}")

    metrics: dict[str, Any] = annotation.metrics()
    lineage_checkpoint = trained = synthetic = None
    if spec.synthesize.enabled:
        from synth.models.table import TableSchema
        from synth.progress import watch
        from synth.sample import sample_table
        from synth.tabular import TableEncoder

        syn = spec.synthesize
        modelled = {n: k for n, k in kinds.items() if k != "id"}
        with _timed(timings, "train"):
            encoder = TableEncoder.fit(frames["train"].select(list(kinds)), kinds, spec.seed, primary=target_name)
            schema = TableSchema(encoder.to_json())
            train_data = ray.data.from_numpy(encoder.encode(frames["train"])).rename_columns({"data": "features"})
            trained, lineage_checkpoint = train_generator(
                spec, run_id, run_dir, train_data, schema,
                f"{frames['train'].num_rows} rows × {encoder.width} features (condition vector {encoder.cond_width})")
            generator_id = lineage_checkpoint["generator_id"]
        with _timed(timings, "sample"):
            plan = condition_plan(spec, encoder, frames["train"], target_name)
            progress = CONSOLE.progress("sample", sum(n for _, _, n in plan), "rows")
            with watch(lambda state: progress.update(state["done"])) as board:
                synthetic = _concat(sample_table(trained.model_dir, plan, spec.seed, generator_id,
                                                 syn.sampler_actors, board=board).to_arrow_refs(), frames["train"].schema)
            progress.close(f"{synthetic.num_rows:,} rows from {generator_id}: "
                           + ", ".join(f"{c}={v}: {n}" for c, v, n in plan))
        if spec.evaluate.enabled:
            from synth.metrics.tabular import evaluate_table

            with _timed(timings, "evaluate"):
                metrics.update(evaluate_table(frames["train"], frames["test"], synthetic, modelled, target_name,
                                              spec.seed))
                log("evaluate", ", ".join(f"{key} {metrics[key]:.4g}" for key in (
                    "quality_score", "detection_auc", "tstr_f1", "trtr_f1", "tstr_ratio", "exact_copies")))

    failures = failed_gates(applicable_gates(spec.evaluate.gates, spec.synthesize.enabled), metrics)
    target, staging = publish_locations(spec, run_dir, run_id, bool(failures))
    with _timed(timings, "publish"):
        schema_arrow = table_schema(types, target_name, class_names, label_quality=annotation.issue is not None)
        published = {s: write_table_split(_published(frames[s], target_name, class_names, "real", None), staging.join("data"),
                                          s, schema_arrow, spec.publish.rows_per_shard) for s in ("train", "test")}
        synthetic_rows = 0
        if synthetic is not None:
            synthetic_rows = write_table_split(
                _published(synthetic, target_name, class_names, "synthetic", lineage_checkpoint["generator_id"]),
                staging.join("synthetic"), "train", schema_arrow, spec.publish.rows_per_shard)
    lineage = {
        **base_lineage(spec, run_id, spec_hash, code_version, collected.fingerprints, lineage_checkpoint, timings,
                       rows_in, rejected_by_reason, pending_review, published, synthetic_rows),
        "column_kinds": kinds, "class_names": class_names, "annotation": annotation.report, "run_dir": run_dir,
    }
    if synthetic is not None:
        _put_plot(staging, "columns.png", lambda path: plots.column_distributions(frames["train"], synthetic, kinds, path))
        if trained.history:
            _put_plot(staging, "losses.png", lambda path: plots.loss_curves(trained.history, path))
    card = render_table_card(spec.name, schema_arrow, target_name, class_names, published, synthetic_rows,
                             rejected_by_reason, {k: v for k, v in metrics.items() if not isinstance(v, dict)},
                             annotation.report,
                             card_lineage(spec_hash, collected.fingerprints, lineage_checkpoint, lineage["rows"]))
    return finish(spec, staging, target, card, metrics, lineage, failures, timings)


def condition_plan(spec: Spec, encoder, train: pa.Table, target: str) -> list[tuple[str, Any, int]]:
    """(column, value, rows) to generate: the spec's `conditions`, or the target's train shares
    scaled to `synthesize.rows` (default: as many rows as the train split)."""
    if spec.synthesize.conditions:
        (column, counts), = spec.synthesize.conditions.items()
        plan = [(column, encoder.category_key(column, value), int(n)) for value, n in counts.items()]
    else:
        total = spec.synthesize.rows or train.num_rows
        values, counts = np.unique(np.array([str(v) for v in train[target].to_pylist()]), return_counts=True)
        shares = counts / counts.sum() * total
        rows = np.floor(shares).astype(int)
        rows[np.argsort(-(shares - rows))[:total - rows.sum()]] += 1  # largest remainders: exact total
        plan = [(target, encoder.category_key(target, v), int(n)) for v, n in zip(values, rows) if n]
    for column, value, _ in plan:
        try:
            encoder.condition_vector(column, value)
        except ValueError as error:
            raise SpecError(str(error)) from None
    return plan


def _cleaned_stage(collected, types: dict[str, pa.DataType], hashed: list[str], folder: io.Location) -> pa.Table:
    """Every row cast to its column's type, with reject reasons and content hashes; read from
    the stage folder when an earlier run with the same inputs wrote it."""
    path = folder.join("cleaned.parquet")
    if folder.fs.exists(path.path):
        with folder.fs.open(path.path, "rb") as handle:
            return pq.read_table(handle)
    marked = collected.dataset.map_batches(_clean, fn_kwargs={"types": types, "hashed": hashed},
                                           batch_format="pyarrow")
    cleaned = _concat(marked.to_arrow_refs(), None)
    folder.fs.makedirs(folder.path, exist_ok=True)
    with folder.fs.open(f"{path.path}.partial", "wb") as handle:
        pq.write_table(cleaned, handle)
    folder.fs.mv(f"{path.path}.partial", path.path)  # complete or absent
    return cleaned


def _concat(refs: list, schema: pa.Schema | None) -> pa.Table:
    tables = [t for t in ray.get(refs) if t.num_rows]
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables)


def _with_annotation(table: pa.Table, annotation, target: str) -> pa.Table:
    """The target column set to each row's final label (given, rule, model or human), plus
    the label provenance columns."""
    names = annotation.class_names
    table = table.set_column(table.column_names.index(target), target,
                             pa.array([names[i] if i >= 0 else None for i in annotation.label], pa.string()))
    table = table.append_column("label_source", pa.array([s or None for s in annotation.source], pa.string()))
    table = table.append_column("label_confidence", pa.array(annotation.confidence, pa.float32()))
    if annotation.issue is not None:
        table = table.append_column("label_issue", pa.array(annotation.issue)).append_column(
            "suggested_label", pa.array(annotation.suggested, pa.int64()))
    return table


def _published(table: pa.Table, target: str, class_names: list[str], origin: str, generator: str | None) -> pa.Table:
    index = {n: i for i, n in enumerate(class_names)}
    ids = pa.array([index[str(v)] for v in table[target].to_pylist()], pa.int64())
    table = table.set_column(table.column_names.index(target), target, ids)
    n = table.num_rows
    refs = table["source_ref"] if "source_ref" in table.column_names else pa.nulls(n, pa.string())
    table = table.drop_columns([c for c in ("source_ref",) if c in table.column_names])
    if "label_source" not in table.column_names:  # generated rows: labelled by their condition
        table = table.append_column("label_source", pa.array(["conditioned"] * n, pa.string()))
    return table.append_column("origin", pa.array([origin] * n, pa.string())).append_column(
        "generator", pa.array([generator] * n, pa.string())).append_column("source_ref", refs)

