"""Connect to Ray: an embedded local runtime by default, or a cluster by address.

With no address (argument or `RAY_ADDRESS`) datakiln starts a private local Ray sized to
the machine, bound to 127.0.0.1, with its temp files under the run root instead of
`/tmp/ray`. An already initialised Ray (a test session, a notebook) is reused as is.
"""

from __future__ import annotations

import logging
import os
import tempfile

from cluster.memory import return_freed_arrow_memory

LOCAL_MIN_LOGICAL_CPUS = 4
"""More logical CPUs than cores avoids actor-pool deadlocks on small machines."""


def connect(address: str | None = None, temp_dir: str | None = None) -> None:
    """Use the running Ray, the cluster at `address`/`RAY_ADDRESS`, or start an embedded one
    (temp files under `temp_dir`, default `<tmp>/datakiln-ray`)."""
    import ray

    if ray.is_initialized():
        return
    # Inherited by the local workers: Ray Data's per-dataset INFO lines are noise to users.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    return_freed_arrow_memory()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, logging_config=_worker_logging())
        return
    set_embedded_environment()
    memory = _available_memory()
    ray.init(
        num_cpus=embedded_resources()["CPU"],
        object_store_memory=int(min(max(memory * 0.25, 512 * 2**20), 8 * 2**30)) if memory else None,
        include_dashboard=True,  # Ray Train's placement-group cleaner needs the state API
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        _temp_dir=os.path.abspath(temp_dir or os.path.join(tempfile.gettempdir(), "datakiln-ray")),
        logging_level=logging.WARNING,
        configure_logging=True,
        logging_config=_worker_logging(),
    )
    # Ray Data warns "does not have any available CPUs" when the resource view, which lags,
    # still counts the CPUs of tasks that just finished; in a runtime that datakiln alone
    # schedules, that is never a real hang, so mark the one-time warning as already shown.
    from ray.util.debug import log_once

    log_once("cpu_warning")
    global _embedded_cores
    _embedded_cores = os.cpu_count() or 1
    _warm_workers(_embedded_cores)


EMBEDDED_ENVIRONMENT = {
    "RAY_AUTH_MODE": "disabled",  # an embedded runtime is private to this process and listens on loopback only
    # Ray Train's controller polls its workers every 2 s by default, so every training
    # waited up to 2 s to start and to end; on one machine a poll is cheap.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # A laptop's node is not preempted: no watcher actor (a process of its own) per training.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
"""Settings of an embedded runtime, inherited by its processes (a value the user set wins)."""


def set_embedded_environment() -> None:
    for name, value in EMBEDDED_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    return_freed_arrow_memory()



def embedded_resources() -> dict[str, int]:
    """What `connect` gives an embedded runtime: logical CPUs, and the GPUs torch can see."""
    import torch

    return {"CPU": max(LOCAL_MIN_LOGICAL_CPUS, os.cpu_count() or 1), "GPU": torch.cuda.device_count()}


def check_training_resources(workers: int, use_gpu: bool, fixed: bool, log) -> None:
    """Fail before any work when the training workers cannot all be placed: against the
    running Ray, or (before an embedded one starts, so the answer takes no Ray start-up)
    against what it will have. `fixed`: the Ray runtime cannot grow (an embedded one); a
    cluster's autoscaler may still add nodes, so there the shortfall is only said."""
    import ray

    from pipeline.errors import SpecError

    total = ray.cluster_resources() if ray.is_initialized() else embedded_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    problem = None
    if use_gpu and gpus < workers:
        problem = (f"synthesize.use_gpu: {workers} GPU worker(s) need {workers} GPU(s), the Ray runtime has {gpus:g}; "
                   "set synthesize.use_gpu: false, or run on a machine or cluster with GPUs")
    elif workers > cpus:
        problem = (f"synthesize.workers: {workers} training workers need {workers} CPUs, the Ray runtime has "
                   f"{cpus:g}; lower synthesize.workers")
    if problem and fixed:
        raise SpecError(problem)
    if problem:
        log("run", f"{problem} (waiting for the cluster's autoscaler to add nodes)")


def _probe_exists(paths: list[str]) -> tuple[str, list[bool]]:
    import ray

    return ray.get_runtime_context().get_node_id(), [os.path.exists(path) for path in paths]


def check_visible_from_every_node(folders: dict[str, str], timeout_s: float = 60.0) -> int:
    """Fail when a local folder that a cluster run keeps state in (its run dir, a local
    `synthesize.storage`, the staging folder beside a local publish target) is not the same
    folder on every alive node: write a probe file in each, then have one task pinned to each
    node look for them. A folder made for the probe is removed again. Returns how many nodes
    were checked."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.errors import SpecError

    probes, created = {}, []
    for key, folder in folders.items():
        if not os.path.isdir(folder):
            created.append(folder)
        os.makedirs(folder, exist_ok=True)
        probes[key] = os.path.join(folder, f".datakiln-probe-{uuid.uuid4().hex}")
        with open(probes[key], "w") as handle:
            handle.write("written by datakiln to check that every node sees this folder; safe to delete\n")
    try:
        nodes = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}
        look = ray.remote(num_cpus=0)(_probe_exists)
        refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            list(probes.values())) for node in nodes]
        try:
            answers = ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise SpecError(f"run_root: could not check within {timeout_s:.0f}s that every node sees the run's "
                            "folders (a node is not answering)") from None
        for node, seen in answers:
            for (key, folder), found in zip(folders.items(), seen):
                if not found:
                    raise SpecError(f"{key}: {folder} is not visible from the Ray node at {nodes[node]}: a cluster run "
                                    "keeps its state where every node reads and writes it; use a shared filesystem "
                                    "mounted at the same path on every node (or a bucket URL for publish.to and "
                                    "synthesize.storage)")
        return len(answers)
    finally:
        for probe in probes.values():
            if os.path.exists(probe):
                os.remove(probe)
        for folder in created:  # made only to be probed (it is made again when needed)
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)


def _import_data_path() -> None:
    import importlib

    from pipeline.modalities import MODALITIES

    importlib.import_module("ray.data")
    for plugin in MODALITIES.values():  # each modality's row operators, stage and shard writer
        importlib.import_module(plugin.split(":")[0])


_embedded_cores: int | None = None
"""The cores of the embedded runtime this process started (None: a cluster, or Ray started elsewhere)."""
_warming: list = []
"""The warm-up tasks `connect` started and nothing has waited for yet."""


def _warm_workers(count: int) -> None:
    """Have `count` workers (one per core) import Ray Data and datakiln's data path now, in
    the background, while the driver lists the source: a worker's first Ray Data task
    otherwise pays ~1 s of imports. `await_warm_workers` waits for them before the first pass.
    Ray Data's two cluster-wide actors (its stats actor and its autoscaling coordinator,
    processes of their own) start now too: the first dataset otherwise starts them, and its
    first tasks waited ~1 s for them (measured on 2 cores). They are Ray Data internals, so a
    Ray without these names just skips this."""
    import ray

    # num_cpus=0: the warm-up holds no CPU, so the first dataset finds its CPUs free (Ray Data warns
    # "does not have any available CPUs" otherwise); the workers it starts are reused by it.
    warm = ray.remote(num_cpus=0)(_import_data_path)
    _warming.extend(warm.remote() for _ in range(count))
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()
    get_or_create_stats_actor()


def await_warm_workers(timeout_s: float = 60.0) -> None:
    """Wait for the warm-up that `connect` started (a no-op when there is none). Call it before
    the first dataset runs: a task submitted while the warm-up still holds the workers makes
    Ray start another worker, which pays the imports again (on 2 cores, ~3 s before the first
    row pass began, measured)."""
    import ray

    if _warming:
        ray.wait(_warming, num_returns=len(_warming), timeout=timeout_s)
        _warming.clear()


def row_pass_compute():
    """How a CPU-bound row pass (a source's read fused with its row operators) runs: Ray
    tasks, at most one per core in an embedded runtime, whose logical CPUs outnumber its cores
    on purpose (for actor pools): a task beyond the cores only adds a worker process that
    pays its imports. Unbounded on a cluster. Both maps of a pass must use it to stay fused."""
    import ray.data

    return ray.data.TaskPoolStrategy(size=_embedded_cores)


def run_on_every_core(dataset):
    """Let a single-operator pass use all the CPUs it may: Ray Data 2.60's per-operator
    reservation gives a pass that reads from memory half of them (the other half is shared
    with its input buffer, which never runs a task), so its tasks ran mostly one at a time
    (1.2 of 2 at once on average, measured)."""
    dataset.context.op_resource_reservation_enabled = False
    return dataset


def _worker_logging():
    """Workers log warnings and errors only; progress comes from datakiln's own lines."""
    import ray

    return ray.LoggingConfig(log_level="WARNING")


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def configure_data_context() -> None:
    """Deterministic row order (reproducible shards); no per-operator bars or INFO lines,
    which flood a terminal: datakiln reports per stage instead. datakiln shuffles only
    narrow columns (hashes, keys), where the sort-based shuffle starts in a fraction of a
    second; Ray 2.60's default (actor-based) shuffle takes 4-6 s per groupby to start."""
    import ray.data
    from ray.data.context import ShuffleStrategy

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")  # disabled on purpose: no "Progress bars disabled" warning
    context.execution_options.preserve_order = True
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
