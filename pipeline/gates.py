"""Publish gates: `evaluate.gates` maps a metric to a condition such as ">= 0.9".

A run whose metrics fail any gate publishes nothing at the target; its candidate dataset
stays under the run directory, and the error names each failed gate with value and limit.
"""

from __future__ import annotations

import operator
import re
from typing import Any

IMAGE_METRICS = (
    "fid_domain", "fid_domain_floor", "fid_domain_ratio", "kid_domain", "kid_domain_floor", "is_domain",
    "precision", "recall", "density", "coverage", "tstr_accuracy", "trtr_accuracy", "tstr_ratio", "tstr_macro_f1",
    "augment_gain", "nn_copy_fraction", "dcr_ratio",
)
"""In a labelled image run's `metrics.json` (`augment_gain` unless `evaluate.augment` is false; plus
`fid_inception` with `evaluate.inception_weights`)."""
TABLE_METRICS = (
    "quality_score", "column_shapes", "column_pair_trends", "detection_auc", "tstr_accuracy", "trtr_accuracy",
    "tstr_f1", "trtr_f1", "tstr_ratio", "tstr_f1_ratio", "dcr_median_synthetic", "dcr_median_holdout", "dcr_ratio",
    "exact_copies",
)
"""Always in a table run's `metrics.json`."""
LABEL_METRICS = ("label_issues_flagged", "label_noise_estimate")
"""In `metrics.json` when `annotate.label_quality` is on (any run, synthesis or not)."""
GATE_METRICS = tuple(dict.fromkeys(IMAGE_METRICS + ("fid_inception",) + TABLE_METRICS + LABEL_METRICS))
_OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
              "<": operator.lt}
_CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_condition(text: str) -> tuple[str, float]:
    match = _CONDITION.match(str(text))
    if not match:
        raise ValueError(f"expected a condition like '>= 0.9', got {text!r}")
    return match.group(1), float(match.group(2))


def validate_gates(gates: dict[str, str]) -> dict[str, str]:
    for name, condition in gates.items():
        if name not in GATE_METRICS:
            raise ValueError(f"unknown metric '{name}'; known: {', '.join(GATE_METRICS)}")
        parse_condition(condition)
    return gates


def applicable_gates(gates: dict[str, str], synthesizes: bool) -> dict[str, str]:
    """The gates a run is held to: without synthesis there is no synthetic data to judge, so
    only the label gates apply (with synthesis every gate does, evaluated or not)."""
    return gates if synthesizes else {name: condition for name, condition in gates.items() if name in LABEL_METRICS}


def failed_gates(gates: dict[str, str], metrics: dict[str, Any]) -> list[str]:
    """One line per failed gate: `name = value (needs OP LIMIT)`."""
    failures = []
    for name, condition in gates.items():
        op, limit = parse_condition(condition)
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name} not computed (needs {op} {limit:g})")
        elif not _OPERATORS[op](value, limit):
            failures.append(f"{name} = {value:.4g} (needs {op} {limit:g})")
    return failures
