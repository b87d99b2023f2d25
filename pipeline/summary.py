"""The one summary a run ends with: rows, model, gates, key metrics, where the dataset is."""

from __future__ import annotations

import os
from typing import Any

from pipeline.gates import failed_gates, parse_condition

REAL_FLOOR = {"fid_domain": "fid_domain_floor", "kid_domain": "kid_domain_floor", "precision": "precision_floor",
              "recall": "recall_floor", "density": "density_floor", "coverage": "coverage_floor",
              "tstr_accuracy": "trtr_accuracy", "tstr_f1": "trtr_f1"}
"""A metric's value for real data against real data: what the synthetic value is read against."""


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _metric(name: str, metrics: dict[str, Any], gates: dict[str, str]) -> str:
    text = f"{name} {_number(metrics[name])}" if name in metrics else f"{name} —"
    floor = REAL_FLOOR.get(name)
    if floor in metrics:
        text += f" (real {_number(metrics[floor])})"
    if name in gates:
        op, limit = parse_condition(gates[name])
        text += f" [gate {op} {limit:g}: {'FAIL' if failed_gates({name: gates[name]}, metrics) else 'pass'}]"
    return text


def load_lines(target: str, splits: list[str], synthetic: bool) -> list[str]:
    """How to read the published dataset with `datasets.load_dataset`."""
    if "://" in target and not target.startswith("file://"):
        files = {s: f"{target}/data/{s}-*.parquet" for s in splits}
        lines = [f"datasets.load_dataset('parquet', data_files={files}, storage_options=...)"]
        if synthetic:
            lines.append(f"datasets.load_dataset('parquet', data_files={{'train': '{target}/synthetic/train-*.parquet'}}, "
                         "storage_options=...)")
        return lines
    location = os.path.abspath(target.removeprefix("file://"))
    return [f"datasets.load_dataset('{location}')"] + [f"datasets.load_dataset('{location}', 'synthetic')"] * synthetic


def summary_lines(key_metrics: tuple[str, ...], lineage: dict[str, Any], metrics: dict[str, Any], gates: dict[str, str], target: str,
                  failures: list[str], seconds: float) -> list[str]:
    """The closing summary; `key_metrics` (the modality's) are shown besides the gated ones."""
    rows = lineage["rows"]
    rejected = rows["rows_rejected"]
    by_reason = ", ".join(f"{reason} {count:,}" for reason, count in rows["rejected_by_reason"].items())
    splits = ", ".join(f"{split} {count:,}" for split, count in rows["splits"].items())
    state = f"gates failed, candidate kept at {target}" if failures else "published"
    lines = [f"{lineage['name']}: {state} in {_duration(seconds)}",
             f"  rows     {rows['rows_in']:,} in → {rows['rows_out']:,} out ({splits}), {rejected:,} rejected"
             + (f" ({by_reason})" if rejected else "")
             + (f", {rows['pending_review']:,} pending review" if rows["pending_review"] else "")
             + (f"; {rows['synthetic']:,} synthetic" if rows["synthetic"] else "")]
    checkpoint = lineage.get("checkpoint")
    if checkpoint:
        train_s = lineage["timings_s"].get("train", 0.0)
        attempts = len(checkpoint.get("attempts", [])) or 1
        restarts = f" over {attempts} attempts (resumed from checkpoints)" if attempts > 1 else ""
        lines.append(f"  model    {checkpoint['generator_id']}: {checkpoint['epochs']} epochs, {checkpoint['steps']:,} "
                     f"steps in {_duration(train_s)}{restarts}")
    shown = [m for m in key_metrics if m in metrics and m not in gates]
    if gates:
        lines.append("  gates    " + " · ".join(_metric(name, metrics, gates) for name in gates))
    for start in range(0, len(shown), 3):
        lines.append(("  metrics  " if start == 0 else "           ")
                     + " · ".join(_metric(name, metrics, gates) for name in shown[start:start + 3]))
    if not failures:
        lines.append(f"  dataset  {target}")
        for index, line in enumerate(load_lines(target, list(rows["splits"]), bool(rows["synthetic"]))):
            lines.append(("  read     " if index == 0 else "           ") + line)
    lines.append(f"  logs     {os.path.join(lineage['run_dir'], 'logs')}")
    return lines
