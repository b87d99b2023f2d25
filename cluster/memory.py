"""How datakiln's processes give freed memory back to the operating system.

Two allocators keep what a process frees for reuse, so that a step's transient peak stays
with the process for the rest of the run: Arrow's default pool on Linux wheels (mimalloc)
and glibc's malloc, which numpy uses (after a large array is freed glibc raises its mmap
threshold, up to 32 MiB, so later arrays of that size come from a heap it seldom shrinks).
Near dedup of 10^6 documents left the driver holding ~200 MiB of such free memory through
its verification phase (`benchmarks/text.py`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

RETURNING_ARROW_POOL = "jemalloc"
"""Arrow's allocator for datakiln's processes: jemalloc, as Arrow configures it, returns freed
pages within about a second (mimalloc kept ~100 MiB in the driver after near dedup of 10^6
documents); measured no slower on the text stage."""


def return_freed_arrow_memory() -> None:
    """Use `RETURNING_ARROW_POOL` in this process and in the processes it starts (an embedded
    runtime's workers), unless the user chose a pool (`ARROW_DEFAULT_MEMORY_POOL`) or this
    pyarrow build lacks it. Buffers allocated before the switch stay with their own pool."""
    import pyarrow as pa

    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a build without jemalloc: keep its default
        return
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = RETURNING_ARROW_POOL


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def return_free_heap() -> bool:
    """Hand the C heap's free pages back to the OS after a step that made large numpy
    temporaries (a few ms); False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
