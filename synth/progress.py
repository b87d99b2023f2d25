"""Progress from Ray workers to the driver, through Ray (not through worker prints).

The driver creates a `ProgressBoard` actor (no CPU) and hands its handle to remote code:
training workers `set` their epoch, step and loss; sampler actors `add` the rows they made;
either may `say` a line for the person (a resume, the device in use). A driver thread reads
the board twice a second and calls `on_update` with the latest state; updates are
fire-and-forget, so a worker never waits on the board.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

POLL_SECONDS = 0.5


class ProgressBoard:
    def __init__(self) -> None:
        self.done = 0.0
        self.fields: dict[str, Any] = {}
        self.messages: list[str] = []

    def add(self, amount: float) -> None:
        self.done += amount

    def set(self, **fields: Any) -> None:
        self.fields.update(fields)

    def say(self, message: str) -> None:
        self.messages.append(message)

    def read(self) -> dict[str, Any]:
        """The latest state, and the lines said since the last read."""
        messages, self.messages = self.messages, []
        return {"done": self.done, "fields": dict(self.fields), "messages": messages}


@contextmanager
def watch(on_update: Callable[[dict[str, Any]], None]) -> Iterator[Any]:
    """A board's handle for remote code; `on_update(state)` runs on a driver thread while the
    block runs, and once more (the final state) when it ends. The board is killed after."""
    # On the driver's node: a board on a worker node would go down with that node.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    board = ray.remote(num_cpus=0)(ProgressBoard).options(scheduling_strategy=here).remote()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_SECONDS):
            try:
                on_update(ray.get(board.read.remote(), timeout=10))
            except (ray.exceptions.RayError, TimeoutError):  # the board is a display only
                continue

    thread = threading.Thread(target=poll, name="datakiln-progress", daemon=True)
    thread.start()
    try:
        yield board
    finally:
        stop.set()
        thread.join()
        try:
            on_update(ray.get(board.read.remote(), timeout=10))
        except (ray.exceptions.RayError, TimeoutError):
            pass
        ray.kill(board)
