"""A real multi-node Ray cluster on this machine for tests: `ray start --head` plus worker
nodes (`ray start --address`), unique ports, loopback only. Nodes are stopped by the pids of
the processes this cluster started (never `ray stop`, which would stop every Ray here)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(count: int) -> list[int]:
    """Free loopback ports outside Ray's worker range (10002-19999)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not 10002 <= port <= 19999 and port not in ports:
            ports.append(port)
    return ports


def processes_under(marker: str) -> set[int]:
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


def _kill(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class LocalCluster:
    """Head (`head_cpus`, 0 for a head that only coordinates) and worker nodes added on demand."""

    def __init__(self, head_cpus: int, object_store_bytes: int = 400_000_000):
        self.temp_dir = tempfile.mkdtemp(prefix="dkc-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
        self.common = ["--node-ip-address=127.0.0.1", f"--object-store-memory={object_store_bytes}",
                       "--disable-usage-stats"]
        gcs, dashboard, client, agent, metrics = free_ports(5)
        self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"
        # The nodes' processes name their cluster: with two Ray instances on one machine (this one and
        # the test session's), Ray's address auto-detection fails, and Ray Train's placement-group
        # cleaner, which uses it, would then never exit after a lost driver.
        self.node_env = {**self.env, "RAY_ADDRESS": self.gcs}
        # A lost node is declared dead after 3 missed 1 s health checks (Ray's default: 5 × 3 s).
        self.node_env.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
        self.workers: dict[str, int] = {}
        """Worker node id → its raylet's node-manager port (what marks its processes)."""
        subprocess.run([RAY, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
                        f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
                        f"--temp-dir={self.temp_dir}", "--include-dashboard=true", f"--num-cpus={head_cpus}",
                        *self.common], check=True, env=self.node_env, capture_output=True, timeout=120)

    def add_worker(self, cpus: int) -> str:
        """Start a worker node; return its node id once the cluster lists it alive."""
        before = {n["NodeID"] for n in self.nodes()}
        manager, agent, metrics = free_ports(3)
        subprocess.run([RAY, "start", f"--address={self.gcs}", f"--node-manager-port={manager}",
                        f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
                        f"--num-cpus={cpus}", *self.common], check=True, env=self.node_env, capture_output=True,
                       timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = [n["NodeID"] for n in self.nodes() if n["Alive"] and n["NodeID"] not in before]
            if new:
                self.workers[new[0]] = manager
                return new[0]
            time.sleep(0.5)
        raise RuntimeError("the new worker node did not join")

    def kill_node(self, node_id: str) -> int:
        """SIGKILL a worker node's raylet and everything under it (its workers and agents): a
        lost machine. Returns how many processes were killed."""
        pids = processes_under(f"--node_manager_port={self.workers.pop(node_id)}")
        _kill(pids, signal.SIGKILL)
        return len(pids)

    def nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        return [{"NodeID": n.node_id, "Alive": n.state == "ALIVE", "Ip": n.node_ip}
                for n in list_nodes(address=self.gcs, raise_on_missing_output=False)]

    def shutdown(self) -> None:
        _kill(processes_under(self.temp_dir), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while processes_under(self.temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        _kill(processes_under(self.temp_dir), signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
