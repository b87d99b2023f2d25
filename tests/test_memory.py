"""datakiln's processes give freed memory back: Arrow's pool and the C heap (cluster.memory).

Each allocator test runs in a fresh interpreter: an allocator's state is process-wide."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest
import ray

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RSS = "def rss(): return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) // 1024\n"

ARROW_CHURN = RSS + """
import json, os, sys, time
import numpy as np, pyarrow as pa
from cluster.memory import return_freed_arrow_memory
if sys.argv[1] == "switch":
    return_freed_arrow_memory()
base = rss()
for _ in range(20):  # ~1.7 GB allocated and freed in many buffers
    texts = pa.array(np.random.default_rng(0).random(2_000_000)).cast(pa.string())
    both = pa.concat_arrays([texts, texts])
    del texts, both
time.sleep(1.5)
print(json.dumps({"pool": pa.default_memory_pool().backend_name, "held_mib": rss() - base,
                  "variable": os.environ.get("ARROW_DEFAULT_MEMORY_POOL")}))
"""

HEAP_CHURN = RSS + """
import json
import numpy as np
from cluster.memory import return_free_heap
big = np.ones(2 << 20); del big  # a freed 16 MiB array raises glibc's mmap threshold to 16 MiB
base = rss()
arrays, keepers = [], []
for _ in range(30):
    arrays.append(np.ones(1 << 20))  # 8 MiB each, now from the heap
    keepers.append(np.ones(1000))  # small blocks between them: the heap cannot shrink from its top
del arrays
held = rss() - base
returned = return_free_heap()
print(json.dumps({"held_mib": held, "returned": returned, "after_mib": rss() - base}))
"""


def _run(code: str, *args: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    environment.update(env, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", code, *args], env=environment, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_arrow_memory_freed_by_a_step_goes_back_to_the_os():
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow has no jemalloc")
    default = _run(ARROW_CHURN, "default")
    switched = _run(ARROW_CHURN, "switch")
    assert switched["pool"] == "jemalloc" and switched["variable"] == "jemalloc"  # its workers inherit it
    assert switched["held_mib"] < 100, switched
    if default["pool"] != "jemalloc":  # the pool it replaces kept the freed buffers
        assert default["held_mib"] > switched["held_mib"] + 100, (default, switched)
    chosen = _run(ARROW_CHURN, "switch", ARROW_DEFAULT_MEMORY_POOL="system")
    assert chosen["pool"] == "system" and chosen["variable"] == "system"  # the user's choice wins


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_free_heap_pages_go_back_to_the_os():
    found = _run(HEAP_CHURN)
    if not found["returned"]:
        pytest.skip("no malloc_trim in this C library")
    assert found["held_mib"] > 150 and found["after_mib"] < 30, found


def test_the_embedded_runtime_workers_use_the_returning_pool():
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow has no jemalloc")

    @ray.remote
    def backend() -> str:
        import pyarrow

        return pyarrow.default_memory_pool().backend_name

    assert pa.default_memory_pool().backend_name == "jemalloc"
    assert ray.get(backend.remote()) == "jemalloc"
