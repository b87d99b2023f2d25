"""Training behaves like infrastructure: a killed worker is replaced and the run resumes from
its last checkpoint; a stopped run resumes where it stopped when the same spec runs again."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import load_spec, run
from tests.conftest import MNIST_IMAGES, MNIST_LABELS, RAY_TEMP_DIR, ROOT, needs_shared
from tests.ray_cluster import processes_under

pytestmark = pytest.mark.integration
EPOCHS, BATCH = 4, 64


def _spec_file(tmp_path: Path, **synthesize) -> Path:
    spec = yaml.safe_load((ROOT / "examples" / "mnist.yaml").read_text())
    spec["source"].update(path=str(MNIST_IMAGES), labels=str(MNIST_LABELS), limit=1000)
    spec["synthesize"].update(epochs=EPOCHS, batch_size=BATCH, samples_per_class=4, **synthesize)
    spec["evaluate"]["enabled"] = False
    spec.update(run_root=str(tmp_path / "runs"))
    spec.setdefault("publish", {})["to"] = str(tmp_path / "out")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _registered_checkpoint(root: Path, timeout: float = 300) -> None:
    """Wait until Ray Train's controller has registered a checkpoint (its snapshot file
    names one): a folder on disk alone may not be reported yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for snapshot in root.glob("runs/*/*/train/*/checkpoint_manager_snapshot.json"):
            try:
                if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                    return
            except ValueError:  # being rewritten
                pass
        time.sleep(0.1)
    raise TimeoutError("no checkpoint was registered")


def _expected_steps(lineage) -> int:
    return EPOCHS * -(-lineage["rows"]["splits"]["train"] // BATCH)


def _train_worker_pids() -> list[int]:
    """Ray Train workers of this test session's own Ray (never another Ray on the machine)."""
    pids = []
    for pid in processes_under(RAY_TEMP_DIR):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


@needs_shared
def test_a_killed_worker_is_replaced_and_training_resumes(tmp_path):
    spec = load_spec(str(_spec_file(tmp_path, max_failures=1, learning_rate=2e-3, lr_schedule="linear")))
    killed: list[int] = []

    def kill_after_first_checkpoint():
        _registered_checkpoint(tmp_path)
        for pid in _train_worker_pids():
            os.kill(pid, signal.SIGKILL)  # a real kill of the worker process
            killed.append(pid)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    report = run(spec)
    killer.join(timeout=5)
    assert killed
    training = report.lineage["checkpoint"]
    assert training["restarts"] == 1 and training["attempts"][1]["start_epoch"] >= 1
    assert training["steps"] == _expected_steps(report.lineage)  # no epoch lost, none repeated
    # The replacement worker went on with the same linear decay: the last step ran at 1/steps
    # of the initial learning rate.
    state = torch.load(os.path.join(training["train_checkpoint"], "state.pt"), weights_only=True)
    groups = [group for optimizer in state["optimizers"].values() for group in optimizer["param_groups"]]
    assert groups and all(group["initial_lr"] == 2e-3 for group in groups)
    assert all(group["lr"] == pytest.approx(group["initial_lr"] / training["steps"]) for group in groups)


@needs_shared
def test_a_stopped_run_resumes_when_the_same_spec_runs_again(tmp_path):
    path = _spec_file(tmp_path)
    temp = tempfile.mkdtemp(prefix="dkstop-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "TMPDIR": temp, "RAY_ADDRESS": ""}  # its own embedded Ray, under our temp dir
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(path)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _registered_checkpoint(tmp_path)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # stop the run mid-training
        first.wait(timeout=30)
        for pid in processes_under(temp):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    assert not (tmp_path / "out").exists()

    report = run(load_spec(str(path)))
    attempts = report.lineage["checkpoint"]["attempts"]
    assert [a["start_epoch"] for a in attempts][0] == 0 and attempts[-1]["start_epoch"] >= 1
    assert report.lineage["checkpoint"]["steps"] == _expected_steps(report.lineage)
