"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`,
unique ports, loopback only): `datakiln submit --wait` runs a small MNIST spec on it, then
only the processes this test started are stopped (never `ray stop`)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import MNIST_IMAGES, MNIST_LABELS, ROOT, load_published, needs_shared

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(count: int) -> list[int]:
    """Free loopback ports outside Ray's worker range (10002-19999)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not 10002 <= port <= 19999 and port not in ports:
            ports.append(port)
    return ports


def _processes_under(marker: str) -> set[int]:
    """Pids whose command line names `marker`, plus all their descendants."""
    parents: dict[int, int] = {}
    roots = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if marker in cmdline:
            roots.add(int(entry))
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found |= frontier
    return found


@pytest.fixture(scope="module")
def two_node_cluster():
    temp_dir = tempfile.mkdtemp(prefix="dk2n-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs, dashboard, client, head_agent, worker_agent, head_metrics, worker_metrics = _free_ports(7)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=400000000", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={head_agent}",
                    f"--metrics-export-port={head_metrics}", f"--temp-dir={temp_dir}", "--include-dashboard=true",
                    *common], check=True, env=env, capture_output=True, timeout=120)
    try:
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{gcs}", f"--dashboard-agent-listen-port={worker_agent}",
                        f"--metrics-export-port={worker_metrics}", *common], check=True, env=env, capture_output=True,
                       timeout=120)
        yield {"dashboard": f"http://127.0.0.1:{dashboard}", "gcs": f"127.0.0.1:{gcs}", "env": env}
    finally:
        started = _processes_under(temp_dir)
        for pid in started:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while _processes_under(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in _processes_under(temp_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@needs_shared
def test_submit_runs_a_spec_on_two_nodes(two_node_cluster, tmp_path):
    env = two_node_cluster["env"]
    deadline, status = time.monotonic() + 60, ""
    while status.count("node_") < 2 and time.monotonic() < deadline:  # the autoscaler reports after a few s
        time.sleep(2)
        status = subprocess.run([RAY, "status", f"--address={two_node_cluster['gcs']}"], env=env, capture_output=True,
                                text=True, timeout=60).stdout
    assert status.count("node_") == 2, status  # both nodes joined

    spec = yaml.safe_load((ROOT / "examples" / "mnist.yaml").read_text())
    spec["source"].update(path=str(MNIST_IMAGES), labels=str(MNIST_LABELS), limit=600)
    spec["synthesize"].update(epochs=1, samples_per_class=5, workers=2)  # two DDP workers (gloo)
    spec["evaluate"]["classifier_epochs"] = 1
    spec.setdefault("publish", {})["to"] = str(tmp_path / "out")
    spec["run_root"] = str(tmp_path / "runs")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))

    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", str(path), "--address",
                           two_node_cluster["dashboard"], "--wait", "--timeout", "600"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=700)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.split()[0]
    assert proc.stdout.strip().endswith(f"{job_id}: SUCCEEDED")

    logs = subprocess.run([sys.executable, "-m", "pipeline.cli", "job", "logs", job_id, "--address",
                           two_node_cluster["dashboard"]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "[train] cvae on" in logs.stdout and "2 worker(s)" in logs.stdout
    # the job's log is the console a person reads: no Ray internals, ends with the summary
    assert "worker group" not in logs.stdout and "core_worker" not in logs.stdout and "Traceback" not in logs.stdout
    assert "datasets.load_dataset(" in logs.stdout
    # preflight checked, from a task on each node, that the run's folders are the same on both
    run_logs = next((tmp_path / "runs" / spec["name"]).glob("[0-9a-f]" * 12)) / "logs"
    assert "visible from all 2 nodes" in (run_logs / "console.log").read_text()
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
