"""Labels from a column (the IDX labels file, the class folder of an image, a table column).

Works on the raw label values of every row (narrow keys, in source order): integer labels
index `class_names`; string labels are looked up in it. Rows whose label is missing or
unknown are rejected with a reason rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.errors import SourceError
from pipeline.spec import AnnotateSpec


@dataclass(frozen=True)
class LabelSet:
    """Class names and how raw label values map to class ids."""

    class_names: list[str]
    by_value: dict[str | int, int]


def _present(value) -> bool:
    return value is not None and value != ""


def discover_labels(values: pa.ChunkedArray | pa.Array, live: np.ndarray, spec: AnnotateSpec) -> LabelSet:
    """Class names from the spec, or the sorted distinct labels of the live rows."""
    column = spec.label_column
    if spec.class_names is not None:
        names = list(spec.class_names)
        if len(set(names)) != len(names):
            raise SourceError("annotate.class_names: names must be distinct")
        return LabelSet(names, {**{i: i for i in range(len(names))}, **{n: i for i, n in enumerate(names)}})
    found = [v for v in pa.compute.unique(pa.chunked_array([values]).filter(pa.array(live))).to_pylist() if _present(v)]
    if not found:
        raise SourceError(f"annotate.label_column: column '{column}' holds no labels")
    if all(isinstance(v, (int, np.integer)) for v in found):
        found = sorted(int(v) for v in found)
    else:
        found = sorted(str(v) for v in found)
    return LabelSet([str(v) for v in found], {v: i for i, v in enumerate(found)})


def label_ids(values: pa.ChunkedArray | pa.Array, reasons: np.ndarray, labels: LabelSet) -> np.ndarray:
    """Class id of every row; a live row with a missing or unknown label gets a reject reason."""
    ids = np.zeros(len(reasons), dtype=np.int64)
    for i, value in enumerate(values.to_pylist()):
        if reasons[i]:
            continue
        if not _present(value):
            reasons[i] = "annotate: missing label"
            continue
        key = int(value) if isinstance(value, (int, float)) and value == int(value) else value
        if key not in labels.by_value and isinstance(key, int):
            key = str(key)
        if key not in labels.by_value:
            reasons[i] = f"annotate: label not in class_names ({value!r})"
            continue
        ids[i] = labels.by_value[key]
    return ids
