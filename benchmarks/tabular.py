"""Tabular generators: datakiln's `tvae`/`ctgan` (Ray Train loop, `--workers` workers) against the
`ctgan` PyPI package's TVAE/CTGAN with the same epochs and batch size on the same split of
bank.csv, in one run: training rows/s (setup excluded) and `quality_score` from the same
metric code. Then the fewest epochs (of epochs/50, /25, /10, /5, /2) at which datakiln matches the
package's quality, and the training time that takes against the package's: how much sooner
a user gets data as good. Last line: one JSON object.

The `ctgan` package (BUSL) is never a datakiln dependency; install it beside datakiln only
to run this comparison, in its own virtual environment:

    python -m venv --system-site-packages /tmp/venv-ctgan
    /tmp/venv-ctgan/bin/pip install -c constraints.txt ctgan
    /tmp/venv-ctgan/bin/python benchmarks/tabular.py [--epochs 50] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BANK = os.path.join(ROOT, "..", "shared", "data", "bank", "bank.csv")
TARGET = "deposit"


def split(seed: int = 0):
    import pyarrow.csv

    table = pyarrow.csv.read_csv(BANK)
    order = np.random.default_rng(seed).permutation(table.num_rows)
    cut = int(0.8 * table.num_rows)
    return table.take(order[:cut]), table.take(order[cut:])


def plan_for(train, encoder) -> list[tuple[str, object, int]]:
    values, counts = np.unique(np.array(train[TARGET].to_pylist()), return_counts=True)
    return [(TARGET, encoder.category_key(TARGET, v), int(n)) for v, n in zip(values, counts)]


def datakiln_run(name: str, train, epochs: int, batch_size: int, workers: int) -> tuple[float, float, object]:
    """Median training rows/s per epoch through the Ray Train loop (`workers` workers sharing
    the global batch), the seconds all epochs took (the first one's Ray Data read included),
    and the sampled table."""
    import pyarrow as pa
    import ray
    import ray.data

    from cluster.runtime import configure_data_context, connect
    from synth.models import get_model
    from synth.models.base import with_defaults
    from synth.models.table import TableSchema
    from synth.sample import sample_table
    from synth.tabular import TableEncoder, infer_kinds
    from synth.train import TrainConfig, fit

    connect()
    configure_data_context()
    kinds = infer_kinds(train)
    encoder = TableEncoder.fit(train, kinds, seed=0, primary=TARGET)
    data = ray.data.from_numpy(encoder.encode(train)).rename_columns({"data": "features"}).materialize()
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(model=name, model_config={k: v for k, v in with_defaults(get_model(name), {}).items()
                                                       if k not in ("batch_size", "epochs")},
                             epochs=epochs, batch_size=batch_size // workers, seed=0,
                             attempts_uri=os.path.join(folder, "train", name, "datakiln-attempts"),
                             checkpoint_every=max(1, epochs // 10))
        result = fit(data, TableSchema(encoder.to_json()), config, workers=workers, use_gpu=False,
                     storage_path=os.path.join(folder, "train"), run_name=name, max_failures=0,
                     model_dir=os.path.join(folder, "model"))
        rates = [row["rows_per_s"] for row in result.history]
        refs = sample_table(result.model_dir, plan_for(train, encoder), 0, name, 2).to_arrow_refs()
        synthetic = pa.concat_tables(ray.get(refs)).drop_columns(["source_ref"])
    return float(np.median(rates[1:] or rates)), sum(train.num_rows / rate for rate in rates), synthetic


def pypi_run(name: str, train, epochs: int, batch_size: int) -> tuple[float, float, object]:
    """Training rows/s of the ctgan package's model, timed from its first optimizer step to
    its last (so its data transformer's fit is not counted), those seconds, and its sample
    with the same target counts."""
    import pyarrow as pa
    from ctgan import CTGAN, TVAE
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import pandas as pd

    frame = train.to_pandas()
    discrete = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    frame[discrete] = frame[discrete].astype(object)
    # The package's null handling fails to decode under pandas 3: give it null-free numbers.
    numeric = [c for c in frame.columns if c not in discrete]
    frame[numeric] = frame[numeric].fillna(frame[numeric].median())
    model = (CTGAN if name == "ctgan" else TVAE)(epochs=epochs, batch_size=batch_size)
    stamps: list[float] = []
    hook = register_optimizer_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    try:
        model.fit(frame, discrete)
    finally:
        hook.remove()
    if name == "ctgan":  # a critic step, then a generator step; each draws `batch_size` rows
        steps = len(stamps) // 2
        stamps, rows = stamps[1::2], steps * batch_size
    else:  # every row once per epoch
        steps, rows = len(stamps), epochs * len(frame)
    rate = rows * (steps - 1) / steps / (stamps[-1] - stamps[0])  # the first step ends at stamps[0]
    parts = []
    values, counts = np.unique(frame[TARGET].to_numpy(), return_counts=True)
    for value, count in zip(values, counts):
        if name == "ctgan":
            parts.append(model.sample(int(count), condition_column=TARGET, condition_value=value))
        else:  # the package's TVAE cannot condition: its unconditional sample, same size
            parts.append(model.sample(int(count)))
    sampled = pd.concat(parts, ignore_index=True)
    for field in train.schema:  # the package returns floats for integer columns
        if pa.types.is_integer(field.type):
            sampled[field.name] = sampled[field.name].round()
    synthetic = pa.Table.from_pandas(sampled, preserve_index=False)
    return rate, stamps[-1] - stamps[0], synthetic.cast(train.schema, safe=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--models", default="tvae,ctgan")
    parser.add_argument("--workers", type=int, default=1, help="datakiln's Ray Train workers; each takes "
                        "batch-size / workers rows of the global batch")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from synth.metrics.tabular import evaluate_table
    from synth.tabular import infer_kinds

    train, test = split()
    kinds = infer_kinds(train)
    results = {"rows": train.num_rows, "epochs": args.epochs, "batch_size": args.batch_size, "workers": args.workers}
    names = args.models.split(",")
    # The package first, before Ray starts: Ray's processes would otherwise share its cores.
    package = {name: pypi_run(name, train, args.epochs, args.batch_size) for name in names}
    for name in names:
        ours_rate, ours_seconds, ours = datakiln_run(name, train, args.epochs, args.batch_size, args.workers)
        theirs_rate, theirs_seconds, theirs = package[name]
        ours_metrics = evaluate_table(train, test, ours, kinds, TARGET, 0)
        theirs_metrics = evaluate_table(train, test, theirs, kinds, TARGET, 0)
        print(f"{name}: datakiln {ours_rate:.0f} rows/s, quality {ours_metrics['quality_score']:.4f}, "
              f"tstr_f1 {ours_metrics['tstr_f1']:.4f} | ctgan package {theirs_rate:.0f} rows/s, quality "
              f"{theirs_metrics['quality_score']:.4f}, tstr_f1 {theirs_metrics['tstr_f1']:.4f}", flush=True)
        results[name] = {"datakiln_rows_per_s": round(ours_rate, 1), "package_rows_per_s": round(theirs_rate, 1),
                         "speed_ratio": round(ours_rate / theirs_rate, 2), "target_speed_ratio": 3.0,
                         "datakiln_quality": round(ours_metrics["quality_score"], 4),
                         "package_quality": round(theirs_metrics["quality_score"], 4),
                         "datakiln_tstr_f1": round(ours_metrics["tstr_f1"], 4),
                         "package_tstr_f1": round(theirs_metrics["tstr_f1"], 4),
                         "package_train_s": round(theirs_seconds, 1)}
        for epochs in sorted({max(1, args.epochs // k) for k in (50, 25, 10, 5, 2, 1)}):
            if epochs == args.epochs:  # the full run above
                seconds, quality = ours_seconds, ours_metrics["quality_score"]
            else:
                _, seconds, early = datakiln_run(name, train, epochs, args.batch_size, args.workers)
                quality = evaluate_table(train, test, early, kinds, TARGET, 0)["quality_score"]
            print(f"{name}: datakiln at {epochs} epochs: quality {quality:.4f} in {seconds:.1f} s "
                  f"(package at {args.epochs}: {theirs_metrics['quality_score']:.4f} in {theirs_seconds:.1f} s)", flush=True)
            if quality >= theirs_metrics["quality_score"]:
                results[name].update({"epochs_to_package_quality": epochs, "quality_there": round(quality, 4),
                                      "train_s_to_package_quality": round(seconds, 1),
                                      "time_to_quality_ratio": round(theirs_seconds / seconds, 2)})
                break
    print(json.dumps(results))


if __name__ == "__main__":
    main()
