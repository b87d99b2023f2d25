"""Tables: Parquet, CSV/TSV, JSONL — the table plug-in.

Cleaning happens per block in Ray Data: every modelled column is cast to the kind inferred
from a bounded sample (or given in `source.columns`); values that do not fit (text in a
number column, NaN/inf) reject the row with a reason, and exact duplicate rows are
rejected like duplicate images. The curated splits then come to the driver, where the
encoder is fitted (`synth.tabular.TableEncoder`, `TableSchema`), a `tvae` / `ctgan` is
trained, rows are sampled per condition, and `synth.metrics.tabular` compares whole tables.
Rows publish with their columns typed (numbers, strings, timestamps) and the target as a
`ClassLabel`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from pipeline import io, plots, sources
from pipeline.annotate import Annotation
from pipeline.columns import reason_array
from pipeline.console import CONSOLE, detail, log
from pipeline.errors import SourceError, SpecError
from pipeline.modalities.base import Modality, Staged
from pipeline.modalities.rows import class_shares, published_rows, with_annotation, write_rows
from pipeline.ops import registry
from pipeline.ops.base import REJECT_REASON
from pipeline.publish import annotation_features, arrow_schema, string_features
from pipeline.sources.tables import READ_ERROR
from pipeline.spec import Spec
from pipeline.split import SPLIT_CODES, ref_hashes
from pipeline.stage import stage_folder, stage_key

PROVENANCE = ("origin", "generator", "source_ref")
LABEL_COLUMNS = ("label_source", "label_confidence", "label_issue", "suggested_label")
READING_GUIDE = [
    "How to read these numbers. **Fidelity**: `column_shapes` (1 − KS distance for numbers, 1 − total",
    "variation for categories) and `column_pair_trends` (correlation and contingency similarity) are",
    "in [0, 1], higher is better; `quality_score` is their mean. `detection_auc` near 0.5 means a",
    "classifier cannot tell synthetic rows from real ones. **Utility**: a fixed gradient-boosting",
    "recipe trained on synthetic rows (TSTR) or real rows (TRTR), tested on the real test split.",
    "**Privacy**: `dcr_median_synthetic` well below `dcr_median_holdout`, or `exact_copies` above 0,",
    "means the generator reproduces training rows.",
]
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


def target_type(kind: str, sample: pa.ChunkedArray) -> pa.DataType:
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


def clean_block(table: pa.Table, types: dict[str, pa.DataType], hashed: list[str]) -> pa.Table:
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
    return kinds, {name: target_type(kind, table[name]) for name, kind in kinds.items()}


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


def table_schema(types: dict[str, pa.DataType], target: str, class_names: list[str],
                 label_quality: bool = False) -> pa.Schema:
    """Arrow schema of a published shard (columns in source order, label provenance, then
    row provenance), its HF features (`datasets.Features.from_arrow_schema` for the value
    columns, a `ClassLabel` for the target) in the metadata."""
    import datasets

    values = datasets.Features.from_arrow_schema(pa.schema(list(types.items())))
    features = {name: datasets.ClassLabel(names=list(class_names)) if name == target else values[name]
                for name in types}
    return arrow_schema({**features, **annotation_features(class_names, label_quality), **string_features(PROVENANCE)})


class TableClassifier:
    """The model labeler's and label quality's classifier: the evaluation suite's gradient
    boosting on the cleaned rows' features (row indices into them)."""

    def __init__(self, table: pa.Table, kinds: dict[str, str], target: str):
        from synth.metrics.tabular import table_features

        self.columns = [c for c, k in kinds.items() if c != target and k != "id"]
        self.features, self.categorical = table_features(table, kinds, self.columns, table)

    def fit_predict(self, train: np.ndarray, labels: np.ndarray, rows: np.ndarray, num_classes: int,
                    seed: int, epochs: int) -> np.ndarray:
        from synth.metrics.tabular import fixed_classifier

        model = fixed_classifier(self.categorical, seed).fit(self.features[train], labels)
        probs = np.zeros((len(rows), num_classes))
        probs[:, model.classes_] = model.predict_proba(self.features[rows])
        return probs


class TableModality(Modality):
    key_metrics = ("quality_score", "detection_auc", "tstr_f1", "dcr_ratio", "exact_copies")
    logged_metrics = ("quality_score", "detection_auc", "tstr_f1", "trtr_f1", "tstr_ratio", "exact_copies")

    @property
    def target(self) -> str:
        return self.spec.annotate.label_column

    def collect(self):
        spec = self.spec
        collected = sources.read(spec.source)
        self.kinds, self.types = infer_types(spec, collected.dataset)
        kinds = self.kinds
        log("collect", f"{spec.source.path}: {len(kinds)} columns ("
            + ", ".join(f"{k} {list(kinds.values()).count(k)}" for k in dict.fromkeys(kinds.values())) + ")")
        detail("collect", "columns: " + ", ".join(f"{n} ({k})" for n, k in kinds.items()))
        return collected

    def stage(self, collected, fresh: bool) -> Staged:
        spec = self.spec
        key = stage_key(spec, collected.fingerprints, self.run.code_version,
                        types={n: str(t) for n, t in self.types.items()}, kinds=self.kinds)
        folder = stage_folder(spec, key, fresh)
        cleaned, reused = _cleaned_stage(collected, self.types, [n for n, k in self.kinds.items() if k != "id"], folder)
        reasons = reason_array(cleaned[REJECT_REASON])
        duplicates = registry.build({"op": "dedup"}).decide(cleaned, reasons) if spec.preprocess.dedup_rows else []
        log("preprocess", f"{cleaned.num_rows} rows cast to their column types; "
            f"{len(duplicates)} exact duplicate rows")
        self.cleaned = cleaned
        return Staged(keys=cleaned, given=cleaned[self.target], reasons=reasons,
                      ref_hashes=ref_hashes(cleaned["source_ref"].to_pylist()),
                      stage={"key": key, "folder": folder.url, "reused": reused})

    def classifier(self) -> TableClassifier:
        return TableClassifier(self.cleaned, self.kinds, self.target)

    def annotated(self, annotation: Annotation) -> str:
        self.cleaned = with_annotation(self.cleaned, annotation, self.target)
        return f"target '{self.target}': {annotation.summary()}"

    def review_items(self, rows: np.ndarray) -> dict[str, Any]:
        return {"values": self.cleaned.select(list(self.types)).take(pa.array(rows)).to_pylist()}

    def split(self, codes: np.ndarray, annotation: Annotation) -> dict[str, int]:
        columns = list(self.types) + [c for c in LABEL_COLUMNS if c in self.cleaned.column_names] + ["source_ref"]
        self.frames = {split: self.cleaned.select(columns).filter(pa.array(codes == code))
                       for split, code in SPLIT_CODES.items()}
        return {split: frame.num_rows for split, frame in self.frames.items()}

    def training_data(self, annotation: Annotation):
        from synth.models.table import TableSchema
        from synth.tabular import TableEncoder

        train = self.frames["train"]
        self.encoder = TableEncoder.fit(train.select(list(self.kinds)), self.kinds, self.spec.seed, primary=self.target)
        data = ray.data.from_numpy(self.encoder.encode(train)).rename_columns({"data": "features"})
        return data, TableSchema(self.encoder.to_json()), (
            f"{train.num_rows} rows × {self.encoder.width} features (condition vector {self.encoder.cond_width})")

    def sample(self, model_dir: str, generator_id: str, annotation: Annotation) -> int:
        from synth.progress import watch
        from synth.sample import sample_table

        plan = condition_plan(self.spec, self.encoder, self.frames["train"], self.target)
        progress = CONSOLE.progress("sample", sum(n for _, _, n in plan), "rows")
        with watch(lambda state: progress.update(state["done"])) as board:
            self.synthetic = _concat(sample_table(model_dir, plan, self.spec.seed, generator_id,
                                                  self.spec.synthesize.sampler_actors, board=board).to_arrow_refs(),
                                     self.frames["train"].schema)
        progress.close(f"{self.synthetic.num_rows:,} rows from {generator_id}: "
                       + ", ".join(f"{c}={v}: {n}" for c, v, n in plan))
        return self.synthetic.num_rows

    def evaluate(self, annotation: Annotation, step: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
        from synth.metrics.tabular import evaluate_table

        modelled = {n: k for n, k in self.kinds.items() if k != "id"}
        step("fidelity / utility / privacy")
        return evaluate_table(self.frames["train"], self.frames["test"], self.synthetic, modelled, self.target,
                              self.spec.seed), {}

    def publish(self, staging: io.Location, annotation: Annotation, generator_id: str | None) -> tuple[dict[str, int], int]:
        rows_per_shard, names = self.spec.publish.rows_per_shard, annotation.class_names
        self.schema = table_schema(self.types, self.target, names, label_quality=annotation.issue is not None)
        published = {split: write_rows(published_rows(self.frames[split], self.target, names, "real", None),
                                              staging.join("data"), split, self.schema, rows_per_shard)
                     for split in SPLIT_CODES}
        synthetic_rows = 0
        if getattr(self, "synthetic", None) is not None:
            synthetic_rows = write_rows(
                published_rows(self.synthetic, self.target, names, "synthetic", generator_id),
                staging.join("synthetic"), "train", self.schema, rows_per_shard)
        return published, synthetic_rows

    def lineage(self) -> dict[str, Any]:
        return {"column_kinds": self.kinds}

    def plots(self, staging: io.Location, annotation: Annotation) -> None:
        if getattr(self, "synthetic", None) is not None:
            plots.put_plot(staging, "columns.png", lambda path: plots.column_distributions(
                self.frames["train"], self.synthetic, self.kinds, path))

    def card(self, annotation: Annotation) -> dict[str, Any]:
        target, names = self.target, annotation.class_names
        synthetic = getattr(self, "synthetic", None) is not None
        return {"schema": self.schema, "task": "tabular-classification", "tags": ("datakiln", "synthetic", "tabular"),
                "about": (f"generated rows in the `synthetic` config. The target `{target}` is a ClassLabel; every row",
                          "has `origin` (`real`/`synthetic`); real rows have `source_ref` pointing at their source record."),
                "classes": f"Classes of `{target}` ({len(names)}): {', '.join(names)}",
                "reading_guide": READING_GUIDE,
                "quality_plots": ["Real (train split) against synthetic, column by column:", "",
                                  "![columns](columns.png)", ""],
                "sections": ["Training losses per epoch:", "", "![losses](losses.png)", ""] if synthetic else []}


def condition_plan(spec: Spec, encoder, train: pa.Table, target: str) -> list[tuple[str, Any, int]]:
    """(column, value, rows) to generate: the spec's `conditions`, or the target's train shares
    scaled to `synthesize.rows` (default: as many rows as the train split)."""
    if spec.synthesize.conditions:
        (column, counts), = spec.synthesize.conditions.items()
        plan = [(column, encoder.category_key(column, value), int(n)) for value, n in counts.items()]
    else:
        shares = class_shares(train[target].to_pylist(), spec.synthesize.rows or train.num_rows)
        plan = [(target, encoder.category_key(target, v), n) for v, n in shares]
    for column, value, _ in plan:
        try:
            encoder.condition_vector(column, value)
        except ValueError as error:
            raise SpecError(str(error)) from None
    return plan


def _cleaned_stage(collected, types: dict[str, pa.DataType], hashed: list[str],
                   folder: io.Location) -> tuple[pa.Table, bool]:
    """Every row cast to its column's type, with reject reasons and content hashes, and
    whether it was read from the stage folder (an earlier run with the same inputs wrote it)."""
    path = folder.join("cleaned.parquet")
    if folder.fs.exists(path.path):
        with folder.fs.open(path.path, "rb") as handle:
            return pq.read_table(handle), True
    marked = collected.dataset.map_batches(clean_block, fn_kwargs={"types": types, "hashed": hashed},
                                           batch_format="pyarrow")
    cleaned = _concat(marked.to_arrow_refs(), None)
    folder.fs.makedirs(folder.path, exist_ok=True)
    with folder.fs.open(f"{path.path}.partial", "wb") as handle:
        pq.write_table(cleaned, handle)
    folder.fs.mv(f"{path.path}.partial", path.path)  # complete or absent
    return cleaned, False


def _concat(refs: list, schema: pa.Schema | None) -> pa.Table:
    tables = [t for t in ray.get(refs) if t.num_rows]
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables)


