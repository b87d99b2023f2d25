"""String-keyed operator registries, one per kind of data: specs name operators, typos get
the list of the known ones. The same name may mean different operators for different kinds
(`near_dedup`: perceptual hashes for images, MinHash for text)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pipeline.ops.base import Operator

OPERATORS: dict[str, dict[str, type[Operator]]] = {}
"""kind of data (`image`, `text`) → operator name → class."""


def register(cls: type[Operator]) -> type[Operator]:
    for kind in cls.kinds:
        OPERATORS.setdefault(kind, {})[cls.name] = cls
    return cls


def get(name: str, kind: str = "image") -> type[Operator]:
    known = OPERATORS.get(kind, {})
    try:
        return known[name]
    except KeyError:
        raise ValueError(f"unknown operator '{name}'; known: {', '.join(sorted(known))}") from None


def validate_params(index: int, raw: Any, kind: str = "image") -> dict[str, Any]:
    """Check one `{op: NAME, **params}` entry; return it with defaults filled in."""
    where = str(index)
    if not isinstance(raw, dict) or "op" not in raw:
        raise ValueError(f"{where}: expected a mapping with an 'op' key, got {raw!r}")
    params = {k: v for k, v in raw.items() if k != "op"}
    try:
        cls = get(raw["op"], kind)
        model = cls.Params.model_validate(params)
    except ValueError as err:
        if isinstance(err, ValidationError):
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            detail = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
            raise ValueError(f"{where}.{key}: {detail}" if key else f"{where}: {detail}") from None
        raise ValueError(f"{where}: {err}") from None
    return {"op": raw["op"], **model.model_dump()}


def build(entry: dict[str, Any], kind: str = "image") -> Operator:
    cls = get(entry["op"], kind)
    return cls(cls.Params.model_validate({k: v for k, v in entry.items() if k != "op"}))
