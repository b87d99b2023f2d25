"""What the benchmarks share: run a contender in a child process and sample the memory of
its whole process tree (Ray's raylet, GCS and workers included)."""

from __future__ import annotations

import os
import subprocess
import threading
import time


def pss_kib(pid: int) -> int:
    """The process's proportional set size (shared pages split among their users), in KiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def run_sampled(command: list[str], env: dict[str, str], sample, what: str) -> list[str]:
    """Run `command`; call `sample(pid)` every 0.2 s while it runs; return its stdout lines."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            sample(child.pid)
            time.sleep(0.2)

    sampler = threading.Thread(target=loop, daemon=True)
    sampler.start()
    lines = child.stdout.read().splitlines()
    child.wait()
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"{what} failed with exit {child.returncode}")
    return lines
