"""Operator base classes: they do the bookkeeping, a subclass implements one method.

A row operator turns one record into one record or rejects it with a reason; the base
class runs it over a batch, skips rows that an earlier operator rejected and records
each rejection in the `reject_reason` column (empty string = kept). A dataset operator
needs every row at once (dedup): it decides on narrow per-row keys (a hash, the source
reference) gathered in source order, never on the records themselves.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

REJECT_REASON = "reject_reason"


class Reject(Exception):
    """Raised by an operator for a record that cannot be used; the message is the reason."""


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Operator:
    """Common shape: a registry name and a typed parameter model."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ("image",)
    """The kinds of data whose registry holds the operator (`pipeline.ops.registry`)."""
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel):
        self.params = params


class RowOp(Operator):
    """An operator on one record's image; subclasses implement `apply`."""

    def apply(self, value: Any) -> np.ndarray:
        raise NotImplementedError

    def run(self, values: list[Any], reasons: list[str]) -> None:
        """Apply to every live row in place; a `Reject` becomes that row's reason."""
        for i, value in enumerate(values):
            if reasons[i]:
                continue
            try:
                values[i] = self.apply(value)
            except Reject as why:
                reasons[i] = f"{self.name}: {why}"
                values[i] = None


class DatasetOp(Operator):
    """An operator that needs every row at once; subclasses implement `decide`.

    `key_column` names the per-row key it needs (computed by the row pass); `decide` gets
    the keys table (rows in source order, with `source_ref`) and the reject reasons of all
    rows, marks more rows in place (never un-marks one) and returns the (kept row,
    marked row, distance) pairs it found, for the report.
    """

    key_column: ClassVar[str]

    def decide(self, keys: pa.Table, reasons: np.ndarray) -> list[tuple[int, int, int]]:
        raise NotImplementedError
