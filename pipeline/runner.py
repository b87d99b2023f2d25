"""Run a spec: the one run skeleton every kind of data goes through.

collect → stage → annotate → account → split → train → sample → evaluate → gates → publish
→ card. The steps' order, timing, logging and records are here; what depends on the kind
of data comes from the spec's modality plug-in (`pipeline.modalities`). Data stays in Ray
Datasets or the stage between steps; only small results (counts, keys, a few examples)
reach the driver. Every input row is accounted for: rows_in = rows_out + rows_rejected,
by reason.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from pipeline import io, modalities, plots, publish
from pipeline.annotate import PENDING_REVIEW, annotate, export_review, needs_classifier, read_human_labels
from pipeline.columns import take_rows
from pipeline.commit import TargetError, check_target, commit, is_hub
from pipeline.console import CONSOLE, detail, log
from pipeline.errors import GateError, SpecError
from pipeline.gates import applicable_gates, failed_gates
from pipeline.spec import Spec
from pipeline.split import in_test_split, split_codes
from pipeline.summary import summary_lines

@dataclass
class RunReport:
    """What a finished run returns (and prints)."""

    target: str
    run_dir: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    began = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - began, 3)
    detail(stage, f"done in {timings[stage]:.1f}s")


def _reject_key(reason: str) -> str:
    """Group reasons by kind: drop the per-row detail in brackets or after ' of '."""
    return reason.split(" (")[0].split(" of ")[0]


def account_rejects(spec: Spec, run_id: str, run_dir: str, refs: pa.ChunkedArray, reasons: np.ndarray,
                    class_names: list[str]) -> tuple[int, dict[str, int], int]:
    """Write every rejected row to `<run_dir>/rejects/` with its reason; count them by kind
    and the rows pending review apart; fail the run (after writing `<run_dir>/lineage.json`,
    which `datakiln annotate import` reads) when too many are rejected.
    Returns (rows in, rejected rows by kind, rows pending review)."""
    rows_in = len(reasons)
    kinds_all = np.array([_reject_key(r) if r else "" for r in reasons], dtype=object)
    pending = int((kinds_all == PENDING_REVIEW).sum())
    rejected = np.flatnonzero((kinds_all != "") & (kinds_all != PENDING_REVIEW))
    kinds = list(kinds_all[rejected])
    by_reason = {k: kinds.count(k) for k in sorted(set(kinds))}
    folder = os.path.join(run_dir, "rejects")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    if len(rejected):
        os.makedirs(folder)
        pq.write_table(pa.table({"source_ref": take_rows(refs, rejected), "reason": list(reasons[rejected]),
                                 "reason_key": kinds}), os.path.join(folder, "rejects.parquet"))
    detail("preprocess", f"rows in {rows_in}, rejected {len(rejected)} {by_reason or ''}"
        + (f", pending review {pending}" if pending else ""))
    limit = spec.preprocess.max_reject_fraction
    if rows_in and len(rejected) / rows_in > limit:
        message = (f"preprocess.max_reject_fraction: {len(rejected)}/{rows_in} rows rejected "
                   f"({len(rejected) / rows_in:.1%} > {limit:.1%}); see {folder}")
        publish.write_json(io.resolve(os.path.join(run_dir, "lineage.json")), {
            "run_id": run_id, "name": spec.name, "spec": spec.redacted(), "run_dir": run_dir, "failed": message,
            "class_names": class_names, "rows": {"rows_in": rows_in, "rows_rejected": len(rejected),
                                                 "pending_review": pending, "rejected_by_reason": by_reason}})
        raise GateError(message)
    return rows_in, by_reason, pending


def _code_version() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {name: md.version(name) for name in ("datakiln", "ray", "torch", "datasets", "pyarrow")}
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        versions["git"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        versions["git"] = None
    return versions


def train_config(spec: Spec, run_id: str, run_dir: str, rows: int):
    """The Ray Train settings of a run on `rows` training rows: (TrainConfig, checkpoint
    storage, Ray Train run name). Unset spec values take the model's defaults."""
    from synth.models import get_model
    from synth.models.base import default_epochs, steps_per_epoch, with_defaults
    from synth.train import TrainConfig

    syn = spec.synthesize
    model = get_model(syn.model)
    model_config = with_defaults(model, {**syn.options, "latent_dim": syn.latent_dim,
                                         "learning_rate": syn.learning_rate, "sample_steps": syn.sample_steps,
                                         "guidance": syn.guidance, "temperature": syn.temperature, "top_p": syn.top_p,
                                         "batch_size": syn.batch_size, "epochs": syn.epochs})
    batch_size, epochs = model_config.pop("batch_size"), model_config.pop("epochs")
    if syn.epochs is None:
        epochs = default_epochs(model, rows, batch_size, syn.workers)
    storage = (os.path.abspath(syn.storage) if syn.storage and "://" not in syn.storage
               else syn.storage or os.path.join(run_dir, "train"))
    run_name = f"{spec.name}-{run_id}"
    config = TrainConfig(model=syn.model, model_config=model_config, epochs=epochs, batch_size=batch_size,
                         seed=spec.seed, attempts_uri=f"{storage.rstrip('/')}/{run_name}/datakiln-attempts",
                         checkpoint_every=syn.checkpoint_every or max(1, epochs // 10), precision=syn.precision,
                         lr_schedule=syn.lr_schedule, total_steps=epochs * steps_per_epoch(rows, batch_size, syn.workers))
    return config, storage, run_name


def train_generator(spec: Spec, run_id: str, run_dir: str, data: ray.data.Dataset, schema, what: str, unit: str):
    """Fit the spec's generator on `data` with Ray Train (rows shuffled once, seeded);
    return the fit and its lineage record (weights URI and sha256, generator id, attempts)."""
    from synth.train import fit

    syn = spec.synthesize
    data = data.random_shuffle(seed=spec.seed).materialize()
    config, storage, run_name = train_config(spec, run_id, run_dir, data.count())
    log("train", f"{syn.model} on {what}, {syn.workers} worker(s), {'GPU' if syn.use_gpu else 'CPU'}, "
        f"global batch {config.batch_size * syn.workers}, {config.epochs} epochs")
    rows = data.count()
    progress = CONSOLE.progress("train", config.epochs * rows, unit)
    trained = fit(data, schema, config, workers=syn.workers,
                  use_gpu=syn.use_gpu, storage_path=storage, run_name=run_name, max_failures=syn.max_failures,
                  model_dir=os.path.join(run_dir, "model"), keep_checkpoints=syn.keep_checkpoints,
                  on_progress=lambda state: _show_training(progress, state, config, rows, syn.workers))
    progress.close(f"{config.epochs} epochs, {trained.steps:,} steps"
                   + "".join(f" · {k} {v:.4g}" for k, v in _losses(trained.history).items()))
    weights = io.resolve(os.path.join(trained.model_dir, "model.safetensors"))
    weights_sha = io.sha256_file(weights)
    return trained, {"uri": weights.url, "sha256": weights_sha, "train_checkpoint": trained.checkpoint_path,
                     "generator_id": f"{syn.model}-{weights_sha[:12]}", "epochs": config.epochs,
                     "steps": trained.steps, "attempts": trained.attempts, "restarts": len(trained.attempts) - 1}


def _losses(history: list[dict[str, float]]) -> dict[str, float]:
    """The last epoch's losses (what a person compares between runs)."""
    last = history[-1] if history else {}
    return {k: v for k, v in last.items() if k not in ("epoch", "step", "rows_per_s")}


def _show_training(progress, state: dict[str, Any], config, rows: int, workers: int) -> None:
    """Rank 0's latest report (through `synth.progress`) as the train progress display."""
    for message in state["messages"]:
        log("train", message)
    fields = state["fields"]
    if not fields:
        return
    epochs_done = fields["epochs_done"]
    progress.update(epochs_done * rows + fields["rows_into_epoch"],
                    epoch=f"{min(epochs_done + 1, config.epochs)}/{config.epochs}",
                    step=f"{fields['step']:,}/{config.total_steps:,}",
                    **{name: value for name, value in list(fields["losses"].items())[:3]})


def base_lineage(spec: Spec, run_id: str, spec_hash: str, code_version: dict[str, Any], inputs: list[dict[str, Any]],
                 checkpoint: dict[str, Any] | None, timings: dict[str, float], rows_in: int,
                 rejected_by_reason: dict[str, int], pending_review: int, published: dict[str, int],
                 synthetic_rows: int) -> dict[str, Any]:
    """What every run's `lineage.json` records (each kind of run adds its own keys), after
    checking that every input row was published, rejected or sent to review."""
    rows_out, rows_rejected = sum(published.values()), sum(rejected_by_reason.values())
    if rows_out + rows_rejected + pending_review != rows_in:
        raise RuntimeError(f"row accounting broken: {rows_in} in != {rows_out} out + {rows_rejected} rejected "
                           f"+ {pending_review} pending review")
    rows = {"rows_in": rows_in, "rows_out": rows_out, "rows_rejected": rows_rejected,
            "rejected_by_reason": rejected_by_reason, "pending_review": pending_review, "splits": published,
            "synthetic": synthetic_rows}
    return {"run_id": run_id, "name": spec.name, "spec": spec.redacted(), "spec_hash": spec_hash,
            "code_version": code_version, "inputs": inputs,
            "seeds": {"spec": spec.seed, "split": spec.seed, "train": spec.seed, "sample": spec.seed,
                      "evaluate": spec.seed},
            "checkpoint": checkpoint, "timings_s": timings, "rows": rows}


def finish(spec: Spec, staging: io.Location, target: io.Location, card: str, metrics: dict[str, Any],
           lineage: dict[str, Any], failures: list[str], timings: dict[str, float],
           key_metrics: tuple[str, ...]) -> RunReport:
    """Write the card, metrics and lineage, make the dataset visible at `target`, and fail
    the run (after publishing the candidate) when a gate failed."""
    publish.write_card(staging, card)
    publish.write_json(staging.join("metrics.json"), metrics)
    publish.write_json(staging.join("lineage.json"), lineage)
    commit(staging, target, overwrite=spec.publish.overwrite)
    publish.write_json(io.resolve(os.path.join(lineage["run_dir"], "lineage.json")), lineage)
    gates = applicable_gates(spec.evaluate.gates, spec.synthesize.enabled)
    CONSOLE.print("")
    for line in summary_lines(key_metrics, lineage, metrics, gates, target.url, failures, CONSOLE.elapsed()):
        CONSOLE.print(line, always=True)
    if failures:
        raise GateError(f"evaluate.gates failed: {'; '.join(failures)}; nothing published, candidate at {target.url}")
    return RunReport(target=target.url, run_dir=lineage["run_dir"], metrics=metrics, lineage=lineage, timings=timings)


def _staging_url(target: str, run_id: str) -> str:
    """Where a run writes its dataset before the commit makes it visible at `target`."""
    return f"{target.rstrip('/')}.staging-{run_id}"


def publish_locations(spec: Spec, run_dir: str, run_id: str, failed: bool) -> tuple[io.Location, io.Location]:
    """The publish target (the run's `candidate/` when a gate failed: never the real target)
    and an empty staging folder beside it, where everything is written before the commit."""
    options = {} if failed else spec.publish.storage_options
    target = io.resolve(os.path.join(run_dir, "candidate") if failed else spec.publish_target(), options)
    staging = (io.resolve(os.path.join(run_dir, f"hub-staging-{run_id}")) if is_hub(target)  # one commit from here
               else io.resolve(_staging_url(target.url, run_id), options))
    if staging.fs.exists(staging.path):
        staging.fs.rm(staging.path, recursive=True)
    return target, staging


def run(spec: Spec, address: str | None = None, fresh: bool = False) -> RunReport:
    """Run every stage of `spec`; publish only when all of them succeed. A complete
    collect + preprocess stage of an earlier run with the same inputs is reused unless
    `fresh`."""
    spec_hash = spec.spec_hash()
    # Same spec + same datakiln release → same run dir (reruns resume its checkpoints).
    code_version = _code_version()
    run_id = hashlib.sha256(f"{spec_hash}:{code_version['datakiln']}".encode()).hexdigest()[:12]
    run_dir = os.path.abspath(os.path.join(spec.run_root, spec.name, run_id))
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as err:
        raise SpecError(f"run_root: cannot create the run's folder {run_dir} ({err.strerror or err})") from None
    with CONSOLE.run_logs(run_dir):
        return _run(spec, address, fresh, spec_hash, code_version, run_id, run_dir)


def _run(spec: Spec, address: str | None, fresh: bool, spec_hash: str, code_version: dict[str, Any], run_id: str,
         run_dir: str) -> RunReport:
    from cluster.runtime import (await_warm_workers, check_training_resources, check_visible_from_every_node,
                                 configure_data_context, connect)

    timings: dict[str, float] = {}
    modality = modalities.for_spec(spec, modalities.RunContext(run_id, run_dir, spec_hash, code_version))
    modality.preflight()
    _check_target(spec)
    fixed = not (address or os.environ.get("RAY_ADDRESS"))  # an embedded runtime: its resources are known now
    if spec.synthesize.enabled and fixed:
        check_training_resources(spec.synthesize.workers, spec.synthesize.use_gpu, fixed=True, log=log)
    connect(address)
    CONSOLE.ray_connected()
    configure_data_context()
    if not fixed:  # on a cluster: the run's state must be where every node can reach it
        if spec.synthesize.enabled:
            check_training_resources(spec.synthesize.workers, spec.synthesize.use_gpu, fixed=False, log=log)
        nodes = check_visible_from_every_node(_local_state_folders(spec, run_dir, run_id))
        detail("run", f"run_root and the run's local folders are visible from all {nodes} nodes")
    log("run", f"{spec.name} run {run_id} → {run_dir}")

    with timed(timings, "collect"):
        collected = modality.collect()
    await_warm_workers()  # listing the source overlapped the workers' imports
    # Publishing needs `datasets` (~0.6 s to import): import it while the driver waits on the stage's tasks.
    threading.Thread(target=importlib.import_module, args=("datasets",), name="import-datasets", daemon=True).start()
    with timed(timings, "preprocess"):
        staged = modality.stage(collected, fresh)
    if spec.synthesize.enabled:
        modality.check_model()

    with timed(timings, "annotate"):
        annotation = annotate(spec.annotate, staged.keys, staged.reasons, staged.given, read_human_labels(run_dir),
                              modality.classifier() if needs_classifier(spec.annotate) else None, spec.seed,
                              unlabelled=modality.unlabelled(staged))
        log("annotate", modality.annotated(annotation))
        if len(annotation.review):
            tasks = export_review(run_dir, run_id, staged.refs.to_pylist(), annotation,
                                  **modality.review_items(annotation.review))
            log("annotate", f"{len(annotation.review)} rows to review: import {tasks} into Label Studio, then "
                f"datakiln annotate import {run_dir} EXPORT.json")
    class_names = annotation.class_names
    rows_in, rejected_by_reason, pending_review = account_rejects(spec, run_id, run_dir, staged.refs, staged.reasons,
                                                                  class_names)

    with timed(timings, "split"):
        live = staged.reasons == ""
        is_test = in_test_split(staged.ref_hashes, annotation.label, live, spec.seed, spec.split.test_fraction)
        split_rows = modality.split(split_codes(live, is_test), annotation)
        log("split", ", ".join(f"{split} {count}" for split, count in split_rows.items()))

    metrics: dict[str, Any] = annotation.metrics()
    checkpoint: dict[str, Any] | None = None
    trained = None
    if spec.synthesize.enabled:
        with timed(timings, "train"):
            data, schema, what = modality.training_data(annotation)
            trained, checkpoint = train_generator(spec, run_id, run_dir, data, schema, what, modality.unit)
        with timed(timings, "sample"):
            modality.sample(trained.model_dir, checkpoint["generator_id"], annotation)
        if spec.evaluate.enabled:
            with timed(timings, "evaluate"):
                progress = CONSOLE.progress("evaluate", None, "")
                evaluated, extractor = modality.evaluate(
                    annotation, step=lambda name: progress.update(progress.done + 1, computing=name))
                progress.close(", ".join(f"{key} {evaluated[key]:.4g}" for key in modality.logged_metrics
                                         if key in evaluated))
                metrics.update(evaluated)
                checkpoint.update(extractor)

    failures = failed_gates(applicable_gates(spec.evaluate.gates, spec.synthesize.enabled), metrics)
    target, staging = publish_locations(spec, run_dir, run_id, bool(failures))
    with timed(timings, "publish"):
        published, synthetic_rows = modality.publish(staging, annotation,
                                                     checkpoint["generator_id"] if checkpoint else None)
    lineage = {
        **base_lineage(spec, run_id, spec_hash, code_version, collected.fingerprints, checkpoint, timings,
                       rows_in, rejected_by_reason, pending_review, published, synthetic_rows),
        **modality.lineage(), "class_names": class_names, "annotation": annotation.report, "stage": staged.stage,
        "run_dir": run_dir,
    }
    modality.plots(staging, annotation)
    if trained is not None and trained.history:
        plots.put_plot(staging, "losses.png", lambda path: plots.loss_curves(trained.history, path))
    card = publish.Card(name=spec.name, class_names=class_names, split_rows=published, synthetic_rows=synthetic_rows,
                        rejected_by_reason=rejected_by_reason, annotation=annotation.report,
                        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                        lineage_summary=publish.card_lineage(spec_hash, collected.fingerprints, checkpoint,
                                                             lineage["rows"]),
                        **modality.card(annotation))
    return finish(spec, staging, target, publish.render_card(card), metrics, lineage, failures, timings,
                  modality.key_metrics)


def _check_target(spec: Spec) -> None:
    """Before any work: the publish target can be written (a local one: its nearest existing
    folder is a writable folder) and holds nothing datakiln may not replace."""
    target = spec.publish_target()
    if "://" not in target or target.startswith("file://"):
        existing = os.path.abspath(target.removeprefix("file://"))
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise TargetError(f"publish.to {target}: cannot publish there: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise TargetError(f"publish.to {target}: cannot publish there: no permission to write in {existing}")
    check_target(io.resolve(target, spec.publish.storage_options), spec.publish.overwrite)


def _local_state_folders(spec: Spec, run_dir: str, run_id: str) -> dict[str, str]:
    """The local folders a run writes from Ray tasks and workers (URLs are reachable as they are)."""
    folders = {"run_root": run_dir}
    if spec.synthesize.enabled and spec.synthesize.storage and "://" not in spec.synthesize.storage:
        folders["synthesize.storage"] = os.path.abspath(spec.synthesize.storage)
    target = spec.publish_target()
    if "://" not in target:  # publish tasks write shards into a staging folder beside the target
        folders["publish.to"] = _staging_url(os.path.abspath(target), run_id)
    return folders
