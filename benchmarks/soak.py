"""Soak: the bank spec run N times in a row by one long-lived driver against one standing
local cluster (a head and two worker nodes, started here and stopped by pid).

Each run has its own seed and `fresh`, so every run does the whole work (collect, train,
sample, evaluate, publish). After each run: the driver's RSS, the object store's use, and
the summed RSS of the cluster's processes (GCS, raylets, workers). Growth is the last
run's figure against the first's (after the first run has paid its one-time imports and
worker start-ups); the target is no growth beyond noise. Last line: one JSON object.

    python benchmarks/soak.py [--runs 20] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.ray_cluster import LocalCluster, processes_under  # noqa: E402


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _role(pid: int) -> str:
    """What a cluster process is: `worker` for Ray's worker processes, else its program."""
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return "gone"
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):
        return "worker"
    scripts = [a.decode(errors="replace") for a in argv[1:3] if a.endswith(b".py")]
    return os.path.basename(scripts[0] if scripts else first.split()[0])


def _cluster_by_role(temp_dir: str) -> dict[str, list[float]]:
    """{role: [processes, summed RSS MiB]} over the cluster's processes."""
    roles: dict[str, list[float]] = {}
    for pid in processes_under(temp_dir):
        entry = roles.setdefault(_role(pid), [0, 0.0])
        entry[0] += 1
        entry[1] = round(entry[1] + _rss_mib(pid), 1)
    return dict(sorted(roles.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    cluster = LocalCluster(head_cpus=0)
    work = tempfile.mkdtemp(prefix="datakiln-soak-")
    try:
        cluster.add_worker(cpus=2)
        cluster.add_worker(cpus=2)
        os.environ["RAY_ADDRESS"] = cluster.gcs
        import ray

        from pipeline.console import CONSOLE, QUIET
        from pipeline.runner import run
        from pipeline.spec import load_spec

        CONSOLE.configure(QUIET)
        ray.init(address=cluster.gcs, logging_level="WARNING")
        rows = []
        for index in range(args.runs):
            spec = load_spec(os.path.join(ROOT, "examples", "bank.yaml"), [
                f"seed={index}", f"synthesize.epochs={args.epochs}", f"run_root={work}/runs",
                f"publish.to={work}/out"])
            began = time.perf_counter()
            run(spec, address=cluster.gcs, fresh=True)
            total = ray.cluster_resources().get("object_store_memory", 0)
            free = ray.available_resources().get("object_store_memory", 0)
            row = {"run": index + 1, "seconds": round(time.perf_counter() - began, 1),
                   "driver_rss_mib": round(_rss_mib(os.getpid()), 1),
                   "object_store_used_mib": round((total - free) / 2**20, 1),
                   "cluster_rss_mib": round(sum(_rss_mib(p) for p in processes_under(cluster.temp_dir)), 1),
                   "cluster_by_role": _cluster_by_role(cluster.temp_dir)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        first, last = rows[0], rows[-1]
        print(json.dumps({
            "runs": args.runs, "epochs": args.epochs, "per_run": rows,
            "driver_rss_growth_mib": round(last["driver_rss_mib"] - first["driver_rss_mib"], 1),
            "driver_rss_ratio": round(last["driver_rss_mib"] / first["driver_rss_mib"], 3),
            "object_store_used_last_mib": last["object_store_used_mib"],
            "cluster_rss_ratio": round(last["cluster_rss_mib"] / first["cluster_rss_mib"], 3),
            "cluster_growth_by_role_mib": {
                role: round(count_rss[1] - first["cluster_by_role"].get(role, [0, 0.0])[1], 1)
                for role, count_rss in last["cluster_by_role"].items()}}))
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
