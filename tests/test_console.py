"""What a person watching a run sees: the demo's console in a pipe and on a terminal,
--quiet and --verbose, the closing summary, and the run's logs."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.console import CONSOLE, NORMAL, Progress

RAY_NOISE = ("core_worker", "RayDeprecationWarning", "Progress bars disabled", "worker group", "process group",
             "Traceback", "WARNING", "(pid=")
SMALL_DEMO = ["--set", "source.limit=300", "--set", "synthesize.epochs=2", "--set", "synthesize.samples_per_class=8",
              "--set", "evaluate.classifier_epochs=1", "--set", "evaluate.gates={}"]


def _demo(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "demo", "--out", str(tmp_path / "out"),
            "--set", f"run_root={tmp_path / 'runs'}", *args]


def _run_dir(tmp_path: Path) -> Path:
    return next((tmp_path / "runs" / "digits-demo").glob("[0-9a-f]" * 12))


def test_the_demo_in_a_pipe_prints_a_short_plain_console_and_keeps_ray_in_the_logs(tmp_path):
    proc = subprocess.run(_demo(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    # a pipe gets a progress line per tenth of a stage at most (how many depends on the
    # machine's speed); everything else is one line per stage plus the summary
    progress = [line for line in lines if re.match(r"\[\w+\] \d+% · ", line)]
    per_stage = {stage: sum(line.startswith(stage) for line in progress) for stage in {line.split()[0] for line in progress}}
    assert max(per_stage.values(), default=0) <= 9, proc.stdout
    assert len(lines) - len(progress) <= 22, proc.stdout
    assert not [line for line in lines if any(noise in line for noise in RAY_NOISE)], proc.stdout
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout  # no control characters
    assert proc.stderr == ""
    # the stages as they happen, then one summary
    assert [line.split("]")[0] + "]" for line in lines if line.startswith("[")][:3] == ["[run]", "[collect]", "[preprocess]"]
    assert any(re.match(r"\[train\] \d+% · epoch \d+/60 · step [\d,]+/[\d,]+ · loss ", line) for line in lines), \
        proc.stdout
    summary = lines[lines.index("") + 1:]
    assert summary[0].startswith("digits-demo: published in ")
    assert re.search(r"rows +1,797 in → 1,797 out \(train 1,4\d\d, test 3\d\d\), 0 rejected; 2,000 synthetic",
                     summary[1])
    assert "tstr_ratio" in proc.stdout and "[gate >= 0.8: pass]" in proc.stdout
    out = str(tmp_path / "out")
    assert f"datasets.load_dataset('{out}')" in proc.stdout and f"datasets.load_dataset('{out}', 'synthetic')" in proc.stdout
    # the same lines are in the run's logs, beside what Ray printed
    logs = _run_dir(tmp_path) / "logs"
    assert summary[-1] == f"  logs     {logs}"
    kept = [line.split(" ", 1)[1] for line in (logs / "console.log").read_text().splitlines()]
    assert [line for line in lines if line] == [line for line in kept if line and "done in" not in line
                                                and not line.startswith(("[preprocess] images", "[preprocess] rows in"))]
    ray_log = (logs / "ray.log").read_text()
    assert "worker group" in ray_log and "\x1b" not in ray_log


def test_on_a_terminal_the_training_bar_is_redrawn_in_place_and_verbose_shows_ray(tmp_path):
    """Under a pseudo-terminal the progress is a live tqdm bar: several distinct training
    states are drawn, each over the last (carriage returns), and the run still ends with the
    summary. With --verbose, Ray's own lines and datakiln's detail lines are shown too."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(_demo(tmp_path, "--verbose", "--set", "synthesize.epochs=20", "--set", "source.limit=600",
                                  "--set", "synthesize.samples_per_class=20", "--set", "evaluate.classifier_epochs=1",
                                  "--set", "evaluate.gates={}"),
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert proc.wait(timeout=600) == 0
    reader.join(timeout=10)
    os.close(leader)
    screen = b"".join(chunks).decode("utf-8", "replace")
    frames = [frame for frame in re.split(r"[\r\n]", screen) if "[train]" in frame and "epoch" in frame]
    epochs = {match.group(1) for frame in frames if (match := re.search(r"epoch[= ](\d+)/20", frame))}
    assert len(epochs) >= 3, frames  # the bar moved through several epochs
    assert any("images/s" in frame for frame in frames) and "\r" in screen
    assert "digits-demo: published in " in screen
    assert "worker group" in screen and "done in" in screen  # Ray Train's lines; the detail lines


def test_quiet_prints_only_the_summary(tmp_path, capfd):
    try:
        assert main(["demo", "--out", str(tmp_path / "quiet"), "--quiet", "--set", f"run_root={tmp_path / 'runs'}",
                     "--set", "synthesize.enabled=false", *SMALL_DEMO]) == 0
        quiet = capfd.readouterr()
        lines = quiet.out.splitlines()
        assert lines[0].startswith("digits-demo: published in ") and not [line for line in lines if line.startswith("[")]
        assert quiet.err == ""
    finally:
        CONSOLE.configure()


def test_plain_progress_lines_are_spaced_by_time_and_by_fraction(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr("pipeline.console.time.perf_counter", lambda: clock[0])
    CONSOLE.configure(NORMAL)
    progress = Progress(CONSOLE, "train", 1000, "images")
    for second in range(1, 121):  # 120 s, 1 % more each 1.2 s: at most one line per 10 s and per 10 %
        clock[0] = second * 1.0
        progress.update(second * 1000 / 120, epoch=f"{second // 12 + 1}/10", loss=1 / second)
    progress.close("done")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == [f"{p}%" for p in range(10, 100, 10)], lines
    assert lines[0] == "[train] 10% · epoch 2/10 · loss 0.08333 · 8.33 images/s · ETA 1:48"
    assert lines[-1] == "[train] done (120.0s)"


def test_a_user_error_inside_a_ray_task_is_one_line(tmp_path):
    """A CSV that is not UTF-8, read inside Ray Data tasks: Ray's own ERROR lines and
    tracebacks stay in the run's logs; the console shows datakiln's one line."""
    source = tmp_path / "bad.csv"
    source.write_bytes(b"x,label\n1,a\n" + "2,\u00e9\n".encode("latin-1") * 50)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: bad\nsource: {{format: csv, path: {source}}}\nannotate: {{label_column: label}}\n"
                    f"synthesize: {{enabled: false}}\nrun_root: {tmp_path / 'runs'}\npublish: {{to: {tmp_path / 'out'}}}\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(spec)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and str(source) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("override", ["synthesize.use_gpu=true", "synthesize.workers=64"])
def test_what_cannot_run_here_fails_fast_with_one_line(tmp_path, override):
    began = time.perf_counter()
    proc = subprocess.run(_demo(tmp_path, "--set", override), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - began
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert override.split("=")[0] in proc.stderr
    assert took < 10, f"{took:.1f}s to refuse"  # before any Ray start-up
