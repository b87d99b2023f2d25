"""Operator base classes: they do the bookkeeping, a subclass implements one method.

A row operator turns one record into one record or rejects it with a reason; the base
class runs it over a batch, skips rows that an earlier operator rejected and records
each rejection in the `reject_reason` column (empty string = kept). A dataset operator
needs the whole dataset (e.g. dedup) and marks rows the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from pydantic import BaseModel, ConfigDict

REJECT_REASON = "reject_reason"


class Reject(Exception):
    """Raised by an operator for a record that cannot be used; the message is the reason."""


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Operator:
    """Common shape: a registry name and a typed parameter model."""

    name: ClassVar[str]
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
    """An operator that needs the whole dataset; subclasses implement `mark`.

    `mark` gets the dataset with a `reject_reason` column and returns it with more
    rows marked, never fewer rows.
    """

    def mark(self, dataset: ray.data.Dataset) -> ray.data.Dataset:
        raise NotImplementedError


def _filter_by_reason(table: pa.Table, rejected: bool) -> pa.Table:
    empty = pc.equal(table[REJECT_REASON], "")
    return table.filter(pc.invert(empty) if rejected else empty)


def kept_rows(dataset: ray.data.Dataset) -> ray.data.Dataset:
    return dataset.map_batches(_filter_by_reason, fn_kwargs={"rejected": False}, batch_format="pyarrow")


def rejected_rows(dataset: ray.data.Dataset) -> ray.data.Dataset:
    return dataset.map_batches(_filter_by_reason, fn_kwargs={"rejected": True}, batch_format="pyarrow")
