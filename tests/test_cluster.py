"""`datakiln submit --wait` runs a small MNIST spec on a real local cluster (a coordinating
head and two worker nodes: `tests/ray_cluster.py`); submit refuses what a job cannot use."""

import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import MNIST_IMAGES, MNIST_LABELS, ROOT, load_published, needs_shared
from tests.ray_cluster import RAY

pytestmark = pytest.mark.integration


@needs_shared
def test_submit_runs_a_spec_on_two_nodes(local_cluster, tmp_path):
    env = local_cluster.env
    deadline, status = time.monotonic() + 60, ""
    while status.count("node_") < 3 and time.monotonic() < deadline:  # the autoscaler reports after a few s
        time.sleep(2)
        status = subprocess.run([RAY, "status", f"--address={local_cluster.gcs}"], env=env, capture_output=True,
                                text=True, timeout=60).stdout
    assert status.count("node_") == 3, status  # the head and both worker nodes joined

    spec = yaml.safe_load((ROOT / "examples" / "mnist.yaml").read_text())
    spec["source"].update(path=str(MNIST_IMAGES), labels=str(MNIST_LABELS), limit=600)
    spec["synthesize"].update(epochs=1, samples_per_class=5, workers=2)  # two DDP workers (gloo)
    spec["evaluate"]["classifier_epochs"] = 1
    spec.setdefault("publish", {})["to"] = str(tmp_path / "out")
    spec["run_root"] = str(tmp_path / "runs")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))

    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", str(path), "--address",
                           local_cluster.dashboard, "--wait", "--timeout", "600"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=700)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.split()[0]
    assert proc.stdout.strip().endswith(f"{job_id}: SUCCEEDED")

    logs = subprocess.run([sys.executable, "-m", "pipeline.cli", "job", "logs", job_id, "--address",
                           local_cluster.dashboard], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "[train] cvae on" in logs.stdout and "2 worker(s)" in logs.stdout
    # the job's log is the console a person reads: no Ray internals, ends with the summary
    assert "worker group" not in logs.stdout and "core_worker" not in logs.stdout and "Traceback" not in logs.stdout
    assert "datasets.load_dataset(" in logs.stdout
    # preflight checked, from a task on each node, that the run's folders are the same on both
    run_logs = next((tmp_path / "runs" / spec["name"]).glob("[0-9a-f]" * 12)) / "logs"
    assert "visible from all 3 nodes" in (run_logs / "console.log").read_text()
    assert not list(tmp_path.glob("out.staging-*")) and not list(tmp_path.rglob(".datakiln-probe-*"))
    real = load_published(tmp_path / "out", tmp_path=tmp_path)
    assert len(real["train"]) + len(real["test"]) == 600
    synthetic = load_published(tmp_path / "out", "synthetic", tmp_path=tmp_path)["train"]
    assert len(synthetic) == 50


@pytest.mark.parametrize("override, key", [
    (None, "run_root"), ("run_root=runs", "run_root"), ("publish.to=out/mnist", "publish.to"),
    ("synthesize.storage=ckpt", "synthesize.storage"), ("source.path=data/images.gz", "source.path")])
def test_submit_refuses_a_path_the_job_would_resolve_in_its_temporary_working_dir(tmp_path, capsys, override, key):
    """A job runs in a temporary copy of its working dir: a relative (or default) state path
    would put the run's stages, checkpoints or dataset there. Refused before anything is sent."""
    from pipeline.cli import main

    spec = yaml.safe_load((ROOT / "examples" / "mnist.yaml").read_text())
    spec.pop("run_root", None)
    spec.setdefault("publish", {})["to"] = str(tmp_path / "out")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    sets = [] if override is None else ["--set", override]
    if key != "run_root":
        sets += ["--set", f"run_root={tmp_path / 'runs'}"]
    assert main(["submit", str(path), "--address", "http://127.0.0.1:9", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"datakiln: error: {key}: '") and "is relative" in err and "\n" not in err, err
    assert "--set " in err  # says what to set
