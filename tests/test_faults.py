"""Faults at cluster scale, on a real local cluster: a coordinating head (no CPUs) and two
worker nodes. A worker node is SIGKILLed (raylet, workers, agents: a lost machine) during
preprocess, training and sampling of one run; the driver is SIGKILLed during each of those
stages of a run that is then rerun. Each ends in a dataset byte-identical to an
undisturbed run's, with every row accounted for, and nothing of a dead driver is left on the
cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT
from tests.ray_cluster import LocalCluster

pytestmark = pytest.mark.integration
IMAGES = 1500
CLASSES = 3


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Class folders of small PNGs: enough blocks that preprocess spans both nodes."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        label = index % CLASSES
        image = rng.integers(0, 60, size=(16, 16), dtype=np.uint8)
        image[:, label * 5:label * 5 + 5] += 150  # a bright band whose place is the class
        folder = root / f"class{label}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    return root


def _spec(tmp_path: Path, photos: Path, name: str) -> Path:
    spec = {
        "name": "faults", "seed": 0, "run_root": str(tmp_path / f"runs-{name}"),
        "source": {"format": "images", "path": str(photos)},
        "preprocess": {"ops": [{"op": "decode"}, {"op": "color", "mode": "L"}, {"op": "dedup"}]},
        "synthesize": {"model": "cvae", "epochs": 3, "batch_size": 64, "latent_dim": 8, "samples_per_class": 2500,
                       "max_failures": 1, "workers": 1, "checkpoint_every": 1},
        "evaluate": {"classifier_epochs": 1},
        "publish": {"to": str(tmp_path / f"out-{name}"), "rows_per_shard": 1000},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _start(cluster: LocalCluster, spec: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(spec), "--address", cluster.gcs],
                            cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _published(folder: Path) -> dict[str, bytes]:
    """What must be identical: every shard and the metrics (the card and lineage hold timings)."""
    files = sorted(p for p in folder.rglob("*.parquet")) + [folder / "metrics.json"]
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def _wait_for(condition, timeout: float = 300.0, what: str = "", every: float = 0.2) -> None:
    """Poll `condition`; a condition that asks the state API polls at most once a second, so the
    dashboard stays free for Ray's own users of it (Ray Train's placement-group cleaner)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)


def _run_dir(tmp_path: Path, name: str) -> Path | None:
    found = list((tmp_path / f"runs-{name}" / "faults").glob("[0-9a-f]" * 12))
    return found[0] if found else None


def _preprocessing(tmp_path: Path, name: str) -> bool:
    stages = list((tmp_path / f"runs-{name}" / "faults" / "stages").glob("*"))
    return bool(stages) and any(stages[0].glob("part-*")) and not (stages[0] / "stage.json").exists()


def _trained_a_checkpoint(tmp_path: Path, name: str) -> bool:
    run_dir = _run_dir(tmp_path, name)
    return bool(run_dir) and any((run_dir / "train").glob("*/checkpoint_*"))


def _actor_nodes(cluster: LocalCluster, class_fragment: str) -> set[str]:
    from ray.util.state import list_actors

    return {a.node_id for a in list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")],
                                           raise_on_missing_output=False) if class_fragment in a.class_name}


@pytest.fixture(scope="module")
def undisturbed(local_cluster, photos, tmp_path_factory) -> dict[str, bytes]:
    tmp_path = tmp_path_factory.mktemp("undisturbed")
    proc = _start(local_cluster, _spec(tmp_path, photos, "base"))
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return _published(tmp_path / "out-base")


def test_losing_a_worker_node_in_preprocess_training_and_sampling_changes_nothing(local_cluster, photos, undisturbed,
                                                                                 tmp_path):
    proc = _start(local_cluster, _spec(tmp_path, photos, "lossy"))
    lost: list[tuple[str, int]] = []
    joining: list[threading.Thread] = []

    def lose(stage: str, node: str) -> None:
        lost.append((stage, local_cluster.kill_node(node)))
        # a replacement joins, as an autoscaler would add one, while the run goes on
        joining.append(threading.Thread(target=local_cluster.add_worker, args=(2,), daemon=True))
        joining[-1].start()

    def disturb() -> None:
        _wait_for(lambda: _preprocessing(tmp_path, "lossy"), what="preprocess")
        lose("preprocess", next(iter(local_cluster.workers)))
        _wait_for(lambda: _trained_a_checkpoint(tmp_path, "lossy"), what="a checkpoint")
        lose("train", next(iter(_actor_nodes(local_cluster, "RayTrainWorker") & set(local_cluster.workers))))
        _wait_for(lambda: _actor_nodes(local_cluster, "_Sampler") & set(local_cluster.workers), what="samplers",
                  every=1.0)
        lose("sample", next(iter(_actor_nodes(local_cluster, "_Sampler") & set(local_cluster.workers))))

    disturber = threading.Thread(target=disturb, daemon=True)
    disturber.start()
    output, _ = proc.communicate(timeout=900)
    disturber.join(timeout=5)
    for thread in joining:
        thread.join(timeout=120)
    assert proc.returncode == 0, output
    assert [stage for stage, _ in lost] == ["preprocess", "train", "sample"] and all(k > 0 for _, k in lost), lost
    assert _published(tmp_path / "out-lossy") == undisturbed
    lineage = json.loads((tmp_path / "out-lossy" / "lineage.json").read_text())
    rows = lineage["rows"]
    assert rows["rows_in"] == IMAGES == rows["rows_out"] + rows["rows_rejected"]
    assert len(lineage["checkpoint"]["attempts"]) == 2  # the training worker group was restarted once


def test_a_killed_driver_leaves_nothing_behind_and_the_rerun_gives_the_same_dataset(local_cluster, photos, undisturbed,
                                                                                   tmp_path):
    from ray.util.state import list_actors, list_placement_groups

    from ray.util.state import list_jobs

    def alive() -> set[str]:
        """Actors, placement groups and driver jobs alive on the cluster."""
        actors = {f"actor {a.class_name} {a.actor_id}" for a in list_actors(
            address=local_cluster.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)}
        groups = {f"placement group {g.placement_group_id}" for g in list_placement_groups(
            address=local_cluster.dashboard, filters=[("state", "!=", "REMOVED")], raise_on_missing_output=False)}
        jobs = {f"job {j.job_id}" for j in list_jobs(address=local_cluster.dashboard, raise_on_missing_output=False)
                if j.status == "RUNNING"}
        return actors | groups | jobs

    before = alive()  # the cluster's own (e.g. Ray Data's detached stats actor), from the runs before
    spec = _spec(tmp_path, photos, "driver")
    for stage, reached in (("preprocess", lambda: _preprocessing(tmp_path, "driver")),
                           ("train", lambda: _trained_a_checkpoint(tmp_path, "driver")),
                           ("sample", lambda: bool(_actor_nodes(local_cluster, "_Sampler")))):
        proc = _start(local_cluster, spec)
        _wait_for(reached, what=stage, every=1.0 if stage == "sample" else 0.2)
        assert alive() - before  # the run holds actors (and a job) of its own
        proc.send_signal(signal.SIGKILL)  # the laptop's lid closes
        proc.wait(timeout=30)
        time.sleep(5)  # Ray's own clean-up asks the same state API: leave it the dashboard first
        try:
            _wait_for(lambda: not alive() - before, timeout=120, every=5.0)
        except TimeoutError:
            raise AssertionError(f"left on the cluster after a driver killed in {stage}: {alive() - before}") from None
    proc = _start(local_cluster, spec)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    assert "reusing the stage" in output  # the stage the second driver completed
    assert "resuming at epoch" in output or "already trained" in output
    assert _published(tmp_path / "out-driver") == undisturbed
