"""Run a spec: collect → preprocess → annotate → split → synthesize → evaluate → publish.

Data stays in Ray Datasets (Arrow blocks in the object store) between stages; only small
results (counts, thresholds, duplicate lists, a few sample images) reach the driver.
Every input row is accounted for: rows_in = rows_out + rows_rejected, by reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from pipeline import io, ops, plots, publish, sources
from pipeline.annotate import (PENDING_REVIEW, ImageClassifier, annotate, export_review, needs_classifier,
                               read_human_labels)
from pipeline.commit import TargetError, check_target, commit, is_hub
from pipeline.console import CONSOLE, detail, log
from pipeline.errors import GateError, SpecError
from pipeline.evaluate import check_inception_weights
from pipeline.gates import applicable_gates, failed_gates
from pipeline.ops.base import REJECT_REASON
from pipeline.redact import redact_text
from pipeline.spec import Spec
from pipeline.split import in_test_split
from pipeline.summary import summary_lines
from pipeline.stage import SPLIT_CODES, op_entries, build_stage, stage_folder, stage_key

SAMPLES_SHOWN = 6


@dataclass
class RunReport:
    """What a finished run returns (and prints)."""

    target: str
    run_dir: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
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
        pq.write_table(pa.table({"source_ref": refs.take(pa.array(rejected)), "reason": list(reasons[rejected]),
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


def _duplicate_report(duplicates: dict[str, list[tuple[int, int, int]]], refs: pa.ChunkedArray) -> dict[str, Any]:
    """Per dedup operator: how many rows it marked and the first few (kept, dropped) pairs."""
    return {name: {"marked": len(pairs), "examples": [
        {"kept": refs[kept].as_py(), "dropped": refs[row].as_py(), "distance": distance}
        for kept, row, distance in pairs[:10]]} for name, pairs in duplicates.items()}


def _first_rows(table: pa.Table, rows: int) -> pa.Table:
    return table.filter(pa.compute.less(table["sample_index"], rows))


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
    from synth.models.base import default_epochs, with_defaults
    from synth.train import TrainConfig

    syn = spec.synthesize
    model = get_model(syn.model)
    model_config = with_defaults(model, {**syn.options, "latent_dim": syn.latent_dim,
                                         "learning_rate": syn.learning_rate, "sample_steps": syn.sample_steps,
                                         "guidance": syn.guidance, "batch_size": syn.batch_size, "epochs": syn.epochs})
    batch_size, epochs = model_config.pop("batch_size"), model_config.pop("epochs")
    if syn.epochs is None:
        epochs = default_epochs(model, rows, batch_size, syn.workers)
    storage = (os.path.abspath(syn.storage) if syn.storage and "://" not in syn.storage
               else syn.storage or os.path.join(run_dir, "train"))
    run_name = f"{spec.name}-{run_id}"
    config = TrainConfig(model=syn.model, model_config=model_config, epochs=epochs, batch_size=batch_size,
                         seed=spec.seed, attempts_uri=f"{storage.rstrip('/')}/{run_name}/datakiln-attempts",
                         checkpoint_every=syn.checkpoint_every or max(1, epochs // 10), precision=syn.precision)
    return config, storage, run_name


def train_generator(spec: Spec, run_id: str, run_dir: str, data: ray.data.Dataset, schema, what: str):
    """Fit the spec's generator on `data` with Ray Train (rows shuffled once, seeded);
    return the fit and its lineage record (weights URI and sha256, generator id, attempts)."""
    from synth.train import fit

    syn = spec.synthesize
    data = data.random_shuffle(seed=spec.seed).materialize()
    config, storage, run_name = train_config(spec, run_id, run_dir, data.count())
    log("train", f"{syn.model} on {what}, {syn.workers} worker(s), {'GPU' if syn.use_gpu else 'CPU'}, "
        f"global batch {config.batch_size * syn.workers}, {config.epochs} epochs")
    rows = data.count()
    unit = "images" if schema.__class__.__name__ == "ImageSchema" else "rows"
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
    steps_per_epoch = -(-rows // (config.batch_size * workers))
    epochs_done = fields["epochs_done"]
    progress.update(epochs_done * rows + fields["rows_into_epoch"],
                    epoch=f"{min(epochs_done + 1, config.epochs)}/{config.epochs}",
                    step=f"{fields['step']:,}/{config.epochs * steps_per_epoch:,}",
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
           lineage: dict[str, Any], failures: list[str], timings: dict[str, float]) -> RunReport:
    """Write the card, metrics and lineage, make the dataset visible at `target`, and fail
    the run (after publishing the candidate) when a gate failed."""
    with staging.fs.open(staging.join("README.md").path, "w") as handle:
        handle.write(redact_text(card))
    publish.write_json(staging.join("metrics.json"), metrics)
    publish.write_json(staging.join("lineage.json"), lineage)
    commit(staging, target, overwrite=spec.publish.overwrite)
    publish.write_json(io.resolve(os.path.join(lineage["run_dir"], "lineage.json")), lineage)
    kind = "table" if spec.source.kind == "table" else "image"
    gates = applicable_gates(spec.evaluate.gates, spec.synthesize.enabled)
    CONSOLE.print("")
    for line in summary_lines(kind, lineage, metrics, gates, target.url, failures, CONSOLE.elapsed()):
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
    from cluster.runtime import (check_training_resources, check_visible_from_every_node, configure_data_context,
                                 connect)

    timings: dict[str, float] = {}
    inception_sha256 = check_inception_weights(spec.evaluate.inception_weights)
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
    if spec.source.kind == "table":
        from pipeline.tables import run_table

        return run_table(spec, run_id, run_dir, spec_hash, code_version, timings, fresh)

    with _timed(timings, "collect"):
        collected = sources.read(spec.source)
        files = sum(f.get("files", 0) for f in collected.fingerprints)
        counts = ([f"{files:,} files"] if files else []) + (
            [f"{collected.rows:,} rows"] if collected.rows is not None and collected.rows != files else [])
        log("collect", f"{spec.source.path or spec.source.format}: {', '.join(counts) or 'opened'}")

    with _timed(timings, "preprocess"):
        key = stage_key(spec, collected.fingerprints, code_version)
        folder = stage_folder(spec, key)
        if fresh and folder.fs.exists(folder.path):
            folder.fs.rm(folder.path, recursive=True)
        stage = build_stage(spec, collected, folder, key)
        reasons = np.array(stage.keys[REJECT_REASON].to_pylist(), dtype=object)
        _, dataset_ops = ops.split_ops(op_entries(spec))
        duplicates = {op.name: op.decide(stage.keys, reasons) for op in dataset_ops}
        resolved_ops = stage.resolved_ops + [{"op": op.name, **op.params.model_dump()} for op in dataset_ops]
        shape = stage.shape
        detail("preprocess", f"images {shape.height}x{shape.width}x{shape.channels}; ops: "
            + ", ".join(e["op"] for e in resolved_ops)
            + "".join(f"; {name}: {len(pairs)} marked" for name, pairs in duplicates.items()))

    if spec.synthesize.enabled:
        _check_model_fits(spec, shape)

    with _timed(timings, "annotate"):
        classifier = ImageClassifier(stage.pixels()) if needs_classifier(spec.annotate) else None
        annotation = annotate(spec.annotate, stage.keys, reasons, stage.keys["label"], read_human_labels(run_dir),
                              classifier, spec.seed, unlabelled=_is_unlabelled(spec, stage.keys["label"]))
        class_names = annotation.class_names
        log("annotate", annotation.summary())
        if len(annotation.review):
            tasks = export_review(run_dir, run_id, stage.keys["source_ref"].to_pylist(), annotation,
                                  images=stage.images(annotation.review.tolist()))
            log("annotate", f"{len(annotation.review)} rows to review: import {tasks} into Label Studio, then "
                f"datakiln annotate import {run_dir} EXPORT.json")

    rows_in, rejected_by_reason, pending_review = account_rejects(spec, run_id, run_dir, stage.keys["source_ref"],
                                                                  reasons, class_names)

    with _timed(timings, "split"):
        live = reasons == ""
        is_test = in_test_split(stage.keys["ref_hash"].to_numpy(), annotation.label, live, spec.seed,
                                spec.split.test_fraction)
        codes = np.where(live, np.where(is_test, SPLIT_CODES["test"], SPLIT_CODES["train"]), 0).astype(np.int8)
        train, test = (stage.split(codes, annotation.label, s) for s in ("train", "test"))
        split_rows = {s: int((codes == SPLIT_CODES[s]).sum()) for s in ("train", "test")}
        log("split", f"train {split_rows['train']}, test {split_rows['test']}")

    num_classes = len(class_names)
    metrics: dict[str, Any] = annotation.metrics()
    lineage_checkpoint: dict[str, Any] | None = None
    synthetic = evaluation = trained = None
    if spec.synthesize.enabled:
        from synth.models.base import ImageSchema
        from synth.progress import watch
        from synth.sample import sample

        syn = spec.synthesize
        with _timed(timings, "train"):
            schema = ImageSchema(shape.height, shape.width, shape.channels, num_classes)
            # Sources may be sorted by class (class folders): training mixes them once, seeded.
            trained, lineage_checkpoint = train_generator(spec, run_id, run_dir, train, schema,
                                                          f"{split_rows['train']} images")
            generator_id = lineage_checkpoint["generator_id"]
        with _timed(timings, "sample"):
            progress = CONSOLE.progress("sample", num_classes * syn.samples_per_class, "images")
            with watch(lambda state: progress.update(state["done"])) as board:
                synthetic = sample(trained.model_dir, num_classes, syn.samples_per_class, spec.seed, generator_id,
                                   syn.sampler_actors, board=board).materialize()
            progress.close(f"{synthetic.count():,} images from {generator_id}")
        if spec.evaluate.enabled:
            from synth.metrics import evaluate_images, pixels

            with _timed(timings, "evaluate"):
                progress = CONSOLE.progress("evaluate", None, "")
                evaluation = evaluate_images(pixels(train), pixels(test), pixels(synthetic),
                                             num_classes, spec.evaluate.classifier_epochs, spec.seed,
                                             k=spec.evaluate.k, copy_fraction=spec.evaluate.copy_fraction,
                                             inception_weights=spec.evaluate.inception_weights,
                                             classifier_recipe=spec.evaluate.classifier,
                                             labelled=not annotation.unlabelled,
                                             step=lambda name: progress.update(progress.done + 1, computing=name))
                metrics.update(evaluation.metrics)
                lineage_checkpoint["feature_extractor_sha256"] = evaluation.extractor_sha256
                if inception_sha256:
                    lineage_checkpoint["inception_weights_sha256"] = inception_sha256
                progress.close(", ".join(f"{key} {metrics[key]:.4g}" for key in (
                    "tstr_ratio", "fid_domain", "precision", "recall", "nn_copy_fraction") if key in metrics))

    failures = failed_gates(applicable_gates(spec.evaluate.gates, spec.synthesize.enabled), metrics)
    target, staging = publish_locations(spec, run_dir, run_id, bool(failures))
    with _timed(timings, "publish"):
        schema_arrow = publish.image_schema(class_names, label_quality=annotation.issue is not None,
                                            labelled=not annotation.unlabelled)
        shards = stage.shard_groups(spec.publish.rows_per_shard) + (
            -(-synthetic.count() // spec.publish.rows_per_shard) if synthetic is not None else 0)
        progress = publish.ShardProgress(CONSOLE.progress("publish", shards, "shards"))
        published = stage.publish(codes, annotation, staging.join("data"), schema_arrow, spec.publish.rows_per_shard,
                                  on_shard=progress.add)
        synthetic_rows = 0
        if synthetic is not None:
            synthetic_rows = publish.write_split(synthetic, staging.join("synthetic"), "train", schema_arrow,
                                                 spec.publish.rows_per_shard, on_shard=progress.add)
        progress.close()
    lineage = {
        **base_lineage(spec, run_id, spec_hash, code_version, collected.fingerprints, lineage_checkpoint, timings,
                       rows_in, rejected_by_reason, pending_review, published, synthetic_rows),
        "resolved_ops": resolved_ops, "image_shape": [shape.height, shape.width, shape.channels], "class_names": class_names,
        "annotation": annotation.report,
        "stage": {"key": stage.key, "folder": stage.folder.url, "reused": stage.reused},
        "duplicates": _duplicate_report(duplicates, stage.keys["source_ref"]),
        "run_dir": run_dir,
    }
    if synthetic is not None:
        _write_samples(staging, train, synthetic, class_names)
    if evaluation is not None:
        _write_report_plots(staging, evaluation, class_names)
    if trained is not None and trained.history:
        _put_plot(staging, "losses.png", lambda path: plots.loss_curves(trained.history, path))
    near = duplicates.get("near_dedup", [])[:SAMPLES_SHOWN * 2]
    if near:
        pictures = stage.images([row for kept, row, _ in near for row in (kept, row)])
        _put_plot(staging, "near_duplicates.png", lambda path: plots.duplicate_pairs(
            pictures[0::2], pictures[1::2], [d for _, _, d in near], path))
    flagged = annotation.report.get("label_quality", {}).get("flagged_rows", [])
    if flagged:
        pictures = stage.images(flagged)
        _put_plot(staging, "label_issues.png", lambda path: plots.label_issues(
            pictures, [class_names[annotation.given[i]] for i in flagged],
            [class_names[annotation.suggested[i]] for i in flagged], path))
    card = publish.Card(name=spec.name, class_names=class_names, annotation=annotation.report, schema=schema_arrow,
                        split_rows=published,
                        synthetic_rows=synthetic_rows, rejected_by_reason=rejected_by_reason,
                        near_duplicate_pairs=len(near), metrics={k: v for k, v in metrics.items() if not isinstance(v, list)},
                        lineage_summary=publish.card_lineage(spec_hash, collected.fingerprints, lineage_checkpoint,
                                                             lineage["rows"]))
    return finish(spec, staging, target, publish.render_card(card), metrics, lineage, failures, timings)


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


def _check_model_fits(spec: Spec, shape: ops.ImageShape) -> None:
    """Fail before any training when the generator cannot take the stage's image sides."""
    from synth.models import get_model

    multiple = get_model(spec.synthesize.model).side_multiple
    if shape.height % multiple or shape.width % multiple:
        raise SpecError(f"synthesize.model: '{spec.synthesize.model}' needs image sides that are multiples of "
                        f"{multiple}, the images are {shape.height}x{shape.width}; add a resize operator "
                        f"(preprocess.ops: {{op: resize, size: {max(multiple, shape.height // multiple * multiple)}}})")


def _put_plot(staging: io.Location, name: str, draw) -> None:
    """Draw a plot into a local file, then copy it into the staged dataset."""
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, name)
        draw(local)
        staging.fs.put_file(local, staging.join(name).path)


def _is_unlabelled(spec: Spec, given: pa.ChunkedArray) -> bool:
    """The spec's `annotate.unlabelled`, or by default: an image folder with no class sub-folders."""
    if spec.annotate.unlabelled is not None:
        return spec.annotate.unlabelled
    return spec.source.format == "images" and not any(given.to_pylist())


def _write_report_plots(staging: io.Location, evaluation, class_names: list[str]) -> None:
    metrics = evaluation.metrics
    if "tstr_per_class_recall" in metrics:
        _put_plot(staging, "utility.png", lambda path: plots.utility_bars(
            metrics["tstr_per_class_recall"], metrics["trtr_per_class_recall"], class_names, path))
    _put_plot(staging, "class_means.png", lambda path: plots.class_means(
        evaluation.class_means["real"], evaluation.class_means["synthetic"], class_names, path))


def _examples_of_every_class(data: ray.data.Dataset, num_classes: int, per_class: int) -> dict[str, np.ndarray]:
    """The first `per_class` images of each class in `data`'s order (reading only as far as
    needed: a class-sorted source has its last class at the end)."""
    kept: dict[int, list[np.ndarray]] = {label: [] for label in range(num_classes)}
    for batch in data.select_columns(["image", "label"]).iter_batches(batch_size=1024, batch_format="numpy"):
        for image, label in zip(batch["image"], batch["label"]):
            if len(kept[int(label)]) < per_class:
                kept[int(label)].append(image)
        if all(len(images) == per_class for images in kept.values()):
            break
    labels = [label for label, images in kept.items() for _ in images]
    images = [image for group in kept.values() for image in group]
    return {"image": np.stack(images), "label": np.array(labels, dtype=np.int64)}


def _write_samples(staging: io.Location, train: ray.data.Dataset, synthetic: ray.data.Dataset,
                   class_names: list[str]) -> None:
    wanted = SAMPLES_SHOWN * len(class_names)
    real = _examples_of_every_class(train, len(class_names), SAMPLES_SHOWN)
    # The sampler interleaves classes, so the first rows hold SAMPLES_SHOWN of each class.
    fake = synthetic.map_batches(_first_rows, fn_kwargs={"rows": wanted}, batch_format="pyarrow").select_columns(
        ["image", "label"]).take_batch(wanted)
    _put_plot(staging, "samples.png", lambda path: plots.sample_grid(real, fake, class_names, path, SAMPLES_SHOWN))
