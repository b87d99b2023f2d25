"""Labels from a column (the IDX labels file, the class folder of an image, a table column).

Integer labels index `class_names`; string labels are looked up in it. Rows whose label
is missing or unknown are rejected with a reason rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray.data

from pipeline.errors import SourceError
from pipeline.ops.base import REJECT_REASON, kept_rows
from pipeline.spec import AnnotateSpec


@dataclass(frozen=True)
class LabelSet:
    """Class names and how raw label values map to class ids."""

    class_names: list[str]
    by_value: dict[str | int, int]


def discover_labels(dataset: ray.data.Dataset, spec: AnnotateSpec) -> LabelSet:
    """Class names from the spec, or the sorted distinct labels of the kept rows."""
    column = spec.label_column
    if column not in dataset.columns():
        raise SourceError(
            f"annotate.label_column: no column '{column}' in the source (columns: {', '.join(dataset.columns())})"
        )
    if spec.class_names is not None:
        names = list(spec.class_names)
        if len(set(names)) != len(names):
            raise SourceError("annotate.class_names: names must be distinct")
        return LabelSet(names, {**{i: i for i in range(len(names))}, **{n: i for i, n in enumerate(names)}})
    values = [v for v in kept_rows(dataset.select_columns([column, REJECT_REASON])).unique(column) if v not in (None, "")]
    if not values:
        raise SourceError(f"annotate.label_column: column '{column}' holds no labels")
    if all(isinstance(v, (int, np.integer)) for v in values):
        values = sorted(int(v) for v in values)
    else:
        values = sorted(str(v) for v in values)
    return LabelSet([str(v) for v in values], {v: i for i, v in enumerate(values)})


def _label_batch(table: pa.Table, column: str, labels: LabelSet) -> pa.Table:
    raw = table[column].to_pylist()
    reasons = table[REJECT_REASON].to_pylist()
    ids = np.zeros(len(raw), dtype=np.int64)
    for i, value in enumerate(raw):
        if reasons[i]:
            continue
        if value is None or value == "":
            reasons[i] = "annotate: missing label"
            continue
        key = int(value) if isinstance(value, (int, float)) and value == int(value) else value
        if key not in labels.by_value:
            reasons[i] = f"annotate: label not in class_names ({value!r})"
            continue
        ids[i] = labels.by_value[key]
    table = table.drop_columns(sorted({column, "label"} & set(table.column_names)))
    table = table.set_column(table.column_names.index(REJECT_REASON), REJECT_REASON, pa.array(reasons, pa.string()))
    return table.append_column("label", pa.array(ids)).append_column(
        "label_source", pa.array(["given"] * len(ids), pa.string())
    )


def apply_labels(dataset: ray.data.Dataset, spec: AnnotateSpec, labels: LabelSet) -> ray.data.Dataset:
    """Replace the label column with class ids; add `label_source`."""
    return dataset.map_batches(
        _label_batch, fn_kwargs={"column": spec.label_column, "labels": labels}, batch_format="pyarrow"
    )
