"""Reversible encoding of mixed-type tables for the tabular generators.

Every modelled column becomes a few float features:

- numeric (and datetime, as epoch seconds): mode-specific normalisation. A Bayesian
  Gaussian mixture fitted on a bounded sample finds the modes; a value is the one-hot of
  its most likely mode plus its offset from that mode's mean in units of 4 σ. A null is an
  extra "null" mode, so missing values survive the round trip.
- categorical and boolean: one-hot over the categories (null is a category of its own) up
  to `max_one_hot` categories; above that, the category index in binary, so the width
  grows with log2 of the cardinality.
- id-like columns (all values distinct) are not modelled; synthetic rows get fresh ids.

`decode` inverts `encode`: categories exactly, numbers to float precision (integers are
rounded back), nulls preserved, original Arrow types restored.

The encoder also describes its output for the models: `spans` (activation per slice) and
`discrete` (the one-hot columns a generator can be conditioned on).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("numeric", "categorical", "boolean", "datetime", "id")
FIT_SAMPLE_ROWS = 20_000
"""Rows used to fit each column's mixture (a seeded sample when the table is bigger)."""
MAX_MODES = 10
MIN_MODE_WEIGHT = 0.005
NULL = "\0null"
"""Category key standing for a missing value."""


@dataclass
class Column:
    name: str
    kind: str
    arrow_type: str
    """The original Arrow type (`str(pa.DataType)`), restored on decode."""
    categories: list[Any] = field(default_factory=list)
    """categorical/boolean: values in order of frequency; `NULL` for missing."""
    counts: list[int] = field(default_factory=list)
    """categorical/boolean: training rows per category (conditioning frequencies)."""
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    nullable: bool = False
    integer: bool = False
    low: float | None = None
    high: float | None = None
    binary: bool = False
    """categorical above `max_one_hot`: binary code instead of one-hot."""

    @property
    def width(self) -> int:
        if self.kind in ("numeric", "datetime"):
            return 1 + len(self.means) + int(self.nullable)
        if self.kind in ("categorical", "boolean"):
            return max(1, math.ceil(math.log2(len(self.categories)))) if self.binary else len(self.categories)
        return 0


@dataclass(frozen=True)
class Span:
    """A slice of the encoded vector and the output activation that produces it."""

    start: int
    width: int
    activation: str
    """`tanh` (a mode offset), `softmax` (a one-hot), or `sigmoid` (binary code bits)."""


@dataclass(frozen=True)
class Discrete:
    """A one-hot column that generators can be conditioned on."""

    name: str
    start: int
    """Offset of its one-hot in the encoded vector."""
    size: int
    cond_start: int
    """Offset of its block in the condition vector."""
    counts: tuple[int, ...]


def infer_kinds(table: pa.Table, overrides: dict[str, str] | None = None, max_categories: int = 1000) -> dict[str, str]:
    """The kind of each column: spec overrides first, then the Arrow type and the values.

    Strings that all parse as timestamps are datetime; strings or integers whose values are
    all distinct (and more than 50) are id-like; other strings are categorical.
    """
    overrides = overrides or {}
    kinds = {}
    for name in table.column_names:
        if name in overrides:
            kinds[name] = overrides[name]
            continue
        column = table[name]
        kind_type = column.type
        non_null = pc.drop_null(column)
        distinct = len(pc.unique(non_null)) if len(non_null) else 0
        if pa.types.is_boolean(kind_type):
            kinds[name] = "boolean"
        elif pa.types.is_timestamp(kind_type) or pa.types.is_date(kind_type):
            kinds[name] = "datetime"
        elif pa.types.is_integer(kind_type) and distinct == len(non_null) > 50 and _is_run_of_ids(non_null):
            kinds[name] = "id"
        elif pa.types.is_integer(kind_type) or pa.types.is_floating(kind_type):
            kinds[name] = "numeric"
        elif pa.types.is_string(kind_type) or pa.types.is_large_string(kind_type):
            if len(non_null) and set(pc.utf8_lower(pc.unique(non_null)).to_pylist()) <= {"true", "false"}:
                kinds[name] = "boolean"  # as pyarrow types true/false text
            elif len(non_null) and _all_timestamps(non_null):
                kinds[name] = "datetime"
            elif len(non_null) and _number_share(non_null) >= 0.95:  # a few stray texts: rejected when cleaning
                kinds[name] = "numeric"
            elif distinct == len(non_null) > 50 or distinct > max_categories:
                kinds[name] = "id"
            else:
                kinds[name] = "categorical"
        else:
            raise ValueError(f"column '{name}': unsupported type {kind_type}")
    return kinds


def _is_run_of_ids(values: pa.Array) -> bool:
    ints = np.sort(values.to_numpy(zero_copy_only=False).astype(np.int64))
    return bool(np.all(np.diff(ints) > 0) and (ints[-1] - ints[0]) < 2 * len(ints))


def _number_share(values: pa.Array) -> float:
    parsed = 0
    for value in values.to_pylist():
        try:
            float(value)
            parsed += 1
        except ValueError:
            pass
    return parsed / len(values)


def _all_timestamps(values: pa.Array) -> bool:
    try:
        pc.cast(values, pa.timestamp("s"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def as_float(column: pa.ChunkedArray | pa.Array, kind: str) -> np.ndarray:
    """Numbers (datetimes as epoch seconds) as float64 with NaN for nulls."""
    if kind == "datetime":
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pc.cast(column, pa.timestamp("s"))
        column = pc.cast(pc.cast(column, pa.timestamp("s")), pa.int64())
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


class TableEncoder:
    def __init__(self, columns: list[Column], max_one_hot: int, primary: str | None = None):
        self.columns, self.max_one_hot, self.primary = columns, max_one_hot, primary
        """`primary`: the target column; generators condition on it half the time in training."""
        self.spans, self.discrete = self._layout()

    @classmethod
    def fit(cls, table: pa.Table, kinds: dict[str, str], seed: int, max_one_hot: int = 50,
            primary: str | None = None) -> TableEncoder:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import BayesianGaussianMixture

        rng = np.random.default_rng(seed)
        columns = []
        for name in table.column_names:
            kind, column = kinds[name], table[name]
            info = Column(name=name, kind=kind, arrow_type=str(column.type), nullable=column.null_count > 0)
            if kind in ("numeric", "datetime"):
                values = as_float(column, kind)
                present = values[~np.isnan(values)]
                info.integer = kind == "datetime" or pa.types.is_integer(column.type)
                info.low, info.high = (float(present.min()), float(present.max())) if len(present) else (0.0, 0.0)
                fit_on = rng.choice(present, FIT_SAMPLE_ROWS, replace=False) if len(present) > FIT_SAMPLE_ROWS else present
                if len(np.unique(fit_on)) < 2:
                    info.means, info.stds = [float(fit_on.mean()) if len(fit_on) else 0.0], [1.0]
                else:
                    with warnings.catch_warnings():  # an unconverged fit still gives usable modes
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        mixture = BayesianGaussianMixture(
                            n_components=min(MAX_MODES, len(np.unique(fit_on))),
                            weight_concentration_prior_type="dirichlet_process", weight_concentration_prior=0.001,
                            max_iter=100, n_init=1, random_state=seed,
                        ).fit(fit_on.reshape(-1, 1))
                    keep = mixture.weights_ > MIN_MODE_WEIGHT
                    info.means = mixture.means_[keep, 0].tolist()
                    info.stds = np.sqrt(mixture.covariances_[keep].reshape(-1)).clip(1e-6).tolist()
            elif kind in ("categorical", "boolean"):
                counts = Counter(NULL if v is None else v for v in column.to_pylist())
                ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
                info.categories = [value for value, _ in ordered]
                info.counts = [count for _, count in ordered]
                info.binary = len(info.categories) > max_one_hot
            columns.append(info)
        return cls(columns, max_one_hot, primary)

    def _layout(self) -> tuple[list[Span], list[Discrete]]:
        spans, discrete, start, cond = [], [], 0, 0
        for column in self.columns:
            if column.kind in ("numeric", "datetime"):
                spans += [Span(start, 1, "tanh"), Span(start + 1, column.width - 1, "softmax")]
            elif column.kind in ("categorical", "boolean"):
                if column.binary:
                    spans.append(Span(start, column.width, "sigmoid"))
                else:
                    spans.append(Span(start, column.width, "softmax"))
                    discrete.append(Discrete(column.name, start, column.width, cond, tuple(column.counts)))
                    cond += column.width
            start += column.width
        return spans, discrete

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def cond_width(self) -> int:
        return sum(d.size for d in self.discrete)

    def encode(self, table: pa.Table, dtype: type = np.float32) -> np.ndarray:
        """(rows, width) features of `table` (which holds every modelled column): float32 for
        training; float64 when the round trip must be exact to the second or the cent."""
        parts = []
        for column in self.columns:
            if column.kind == "id":
                continue
            if column.kind in ("numeric", "datetime"):
                parts.append(self._encode_number(column, as_float(table[column.name], column.kind)))
            else:
                parts.append(self._encode_category(column, table[column.name].to_pylist()))
        return np.concatenate(parts, axis=1).astype(dtype) if parts else np.zeros((table.num_rows, 0), dtype)

    @staticmethod
    def _encode_number(column: Column, values: np.ndarray) -> np.ndarray:
        means, stds = np.array(column.means), np.array(column.stds)
        out = np.zeros((len(values), column.width))
        missing = np.isnan(values)
        filled = np.where(missing, means[0], values)
        # Most likely mode per value (equal priors: the nearest in σ units).
        mode = np.argmin(np.abs(filled[:, None] - means[None, :]) / stds[None, :], axis=1)
        out[:, 0] = np.where(missing, 0.0, (filled - means[mode]) / (4 * stds[mode]))
        out[np.arange(len(values)), 1 + np.where(missing, len(means), mode)] = 1.0
        return out

    @staticmethod
    def _encode_category(column: Column, values: list[Any]) -> np.ndarray:
        index = {key: i for i, key in enumerate(column.categories)}
        # A category unseen when fitting maps to the most frequent one.
        ids = np.array([index.get(NULL if v is None else v, 0) for v in values], dtype=np.int64)
        if column.binary:
            return ((ids[:, None] >> np.arange(column.width)[None, :]) & 1).astype(np.float64)
        out = np.zeros((len(ids), column.width))
        out[np.arange(len(ids)), ids] = 1.0
        return out

    def decode(self, features: np.ndarray, id_start: int = 0) -> pa.Table:
        """Rows in the original columns and types; softmax spans are read by argmax, so
        generator outputs (probabilities, offsets) decode the same way as encodings."""
        arrays, offset = {}, 0
        for column in self.columns:
            block = features[:, offset:offset + column.width]
            offset += column.width
            if column.kind == "id":
                arrays[column.name] = self._fresh_ids(column, len(features), id_start)
            elif column.kind in ("numeric", "datetime"):
                arrays[column.name] = self._decode_number(column, block)
            else:
                arrays[column.name] = self._decode_category(column, block)
        return pa.table(arrays)

    @staticmethod
    def _fresh_ids(column: Column, rows: int, start: int) -> pa.Array:
        if column.arrow_type.startswith("int"):
            return pa.array(np.arange(start, start + rows) + 1_000_000_000, pa.type_for_alias(column.arrow_type))
        return pa.array([f"synthetic-{start + i}" for i in range(rows)], pa.string())

    @staticmethod
    def _decode_number(column: Column, block: np.ndarray) -> pa.Array:
        means, stds = np.array(column.means), np.array(column.stds)
        mode = block[:, 1:].argmax(1)
        missing = mode == len(means) if column.nullable else np.zeros(len(block), bool)
        mode = np.minimum(mode, len(means) - 1)
        values = np.clip(block[:, 0] * 4 * stds[mode] + means[mode], column.low, column.high)
        if column.integer:
            values = np.round(values)
        mask = missing if missing.any() else None
        if column.kind == "datetime":
            seconds = pa.array(values.astype(np.int64), pa.int64(), mask=mask)
            stamps = pc.cast(seconds, pa.timestamp("s"))
            target = pa.timestamp("s") if column.arrow_type in ("string", "large_string") else _arrow_type(column.arrow_type)
            return pc.cast(stamps, target)
        if column.integer:
            return pa.array(values.astype(np.int64), _arrow_type(column.arrow_type), mask=mask)
        return pa.array(values, _arrow_type(column.arrow_type), mask=mask)

    @staticmethod
    def _decode_category(column: Column, block: np.ndarray) -> pa.Array:
        if column.binary:
            ids = ((block > 0.5).astype(np.int64) << np.arange(column.width)[None, :]).sum(1)
            ids = np.minimum(ids, len(column.categories) - 1)
        else:
            ids = block.argmax(1)
        values = [None if column.categories[i] == NULL else column.categories[i] for i in ids]
        return pa.array(values, _arrow_type(column.arrow_type))

    def condition_vector(self, column: str, value: Any) -> np.ndarray:
        """The condition vector asking for `column == value` (a discrete column)."""
        for item in self.discrete:
            if item.name == column:
                categories = self._column(column).categories
                key = NULL if value is None else value
                if key not in categories:
                    raise ValueError(f"synthesize.conditions.{column}: no category {value!r} "
                                     f"(known: {', '.join(map(str, categories[:20]))})")
                vector = np.zeros(self.cond_width, np.float32)
                vector[item.cond_start + categories.index(key)] = 1.0
                return vector
        raise ValueError(f"synthesize.conditions: '{column}' is not a categorical column the model is conditioned on "
                         f"(conditionable: {', '.join(d.name for d in self.discrete)})")

    def category_key(self, column: str, value: Any) -> Any:
        """`value` as stored in `column`'s categories (spec values arrive as YAML strings/bools)."""
        categories = self._column(column).categories
        if value in categories:
            return value
        for category in categories:
            if str(category) == str(value) or (isinstance(category, bool) and str(value).lower() == str(category).lower()):
                return category
        return value

    def _column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def to_json(self) -> str:
        return json.dumps({"max_one_hot": self.max_one_hot, "primary": self.primary,
                           "columns": [asdict(c) for c in self.columns]}, default=_plain)

    @classmethod
    def from_json(cls, text: str) -> TableEncoder:
        data = json.loads(text)
        return cls([Column(**c) for c in data["columns"]], data["max_one_hot"], data.get("primary"))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _arrow_type(name: str) -> pa.DataType:
    if name in ("string", "large_string"):
        return pa.string()
    if name.startswith("timestamp"):
        unit = name[name.index("[") + 1:name.index("]")].split(",")[0]
        return pa.timestamp(unit)
    return pa.type_for_alias(name)
