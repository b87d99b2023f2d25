"""The stage under memory pressure: 100,000 images through collect + preprocess + publish
with a 200 MB object store, against the same run with a roomy one.

Both runs use an embedded Ray started in a child process (the only difference is
`object_store_memory`); synthesis is off. Reported per run: seconds, bytes Ray spilled to
disk (from its memory summary), the driver's peak PSS and the largest peak PSS of any other
process in the run's tree (raylet, GCS, workers), sampled every 0.2 s. Both runs must
publish byte-identical shards. The input is `benchmarks/preprocess.py`'s folder of MNIST-sized
PNGs. Last line: one JSON object.

    python benchmarks/memory_pressure.py [--images 100000] [--tight-mib 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.preprocess import make_input, stage_only_spec  # noqa: E402
from benchmarks.processes import descendants, pss_kib, run_sampled  # noqa: E402


def _child(root: str, out: str, object_store_mib: int) -> None:
    import ray

    from cluster.runtime import configure_data_context
    from pipeline.runner import run

    ray.init(num_cpus=max(4, os.cpu_count() or 1), object_store_memory=object_store_mib * 2**20,
             _temp_dir=os.path.join(out, "ray"), include_dashboard=False, logging_level="WARNING")
    configure_data_context()
    spec = stage_only_spec("pressure", root, out)
    began = time.perf_counter()
    report = run(spec)
    seconds = time.perf_counter() - began
    from ray._private.internal_api import memory_summary

    summary = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    # Ray's summary has a "Spilled N MiB" line only once something was spilled.
    spilled = re.search(r"Spilled (\d+) MiB", summary)
    print(json.dumps({"seconds": seconds, "rows": report.lineage["rows"]["rows_out"],
                      "spilled_mib": int(spilled.group(1)) if spilled else 0,
                      "object_store_summary": [line.strip() for line in summary.splitlines() if "MiB" in line][:4]}),
          flush=True)


def measure(root: str, work: str, object_store_mib: int) -> dict:
    out = os.path.join(work, f"store-{object_store_mib}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    driver_peak, other_peak = 0, 0

    def sample(pid: int) -> None:
        nonlocal driver_peak, other_peak
        driver_peak = max(driver_peak, pss_kib(pid))
        other_peak = max([other_peak, *(pss_kib(p) for p in descendants(pid) if p != pid)])

    lines = run_sampled([sys.executable, __file__, "--child", "--root", root, "--out", out, "--store-mib",
                         str(object_store_mib)], {**os.environ, "RAY_DATA_LOG_LEVEL": "WARNING"}, sample,
                        f"the run with a {object_store_mib} MiB object store")
    result = json.loads([line for line in lines if line.startswith('{"seconds"')][-1])
    digest = hashlib.sha256()
    dataset = os.path.join(out, "dataset", "data")
    for name in sorted(os.listdir(dataset)):
        with open(os.path.join(dataset, name), "rb") as handle:
            digest.update(name.encode() + handle.read())
    result.update(object_store_mib=object_store_mib, driver_peak_pss_mib=round(driver_peak / 1024),
                  largest_other_process_peak_pss_mib=round(other_peak / 1024), shards_sha256=digest.hexdigest())
    shutil.rmtree(out, ignore_errors=True)
    print(f"object store {object_store_mib:>5} MiB: {result['rows']:,} rows in {result['seconds']:.1f} s, spilled "
          f"{result['spilled_mib']:,} MiB, driver peak {result['driver_peak_pss_mib']:,} MiB, largest other "
          f"process {result['largest_other_process_peak_pss_mib']:,} MiB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--tight-mib", type=int, default=200)
    parser.add_argument("--roomy-mib", type=int, default=4096)
    parser.add_argument("--keep", help="folder for the generated input (reused across runs)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--store-mib", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.root, args.out, args.store_mib)
        return
    work = args.keep or tempfile.mkdtemp(prefix="datakiln-pressure-")
    root = os.path.join(work, f"images-{args.images}")
    if not os.path.isdir(root):
        make_input(root, args.images)
    tight = measure(root, work, args.tight_mib)
    roomy = measure(root, work, args.roomy_mib)
    print(json.dumps({"images": args.images, "tight": tight, "roomy": roomy,
                      "same_output": tight["shards_sha256"] == roomy["shards_sha256"],
                      "seconds_ratio": round(tight["seconds"] / roomy["seconds"], 3),
                      "driver_peak_ratio": round(tight["driver_peak_pss_mib"] / max(roomy["driver_peak_pss_mib"], 1), 3)}))


if __name__ == "__main__":
    main()
