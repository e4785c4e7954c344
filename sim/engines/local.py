"""The ``local`` engine: points run as child processes of this one, ``workers`` at a time.

Owns: a thread per slot that starts a point's process and waits for it
(``run_point``); the processes are the pool, the threads only wait. A point
whose process dies is reported as ``killed`` and the sweep runs it again in a
new process. Does not own: the sweep's plan or memory bound (``sim/sweep.py``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from sim.engines.base import available_memory_bytes
from sim.engines.point import PointOutcome, PointTask, kill_running, run_point


class LocalEngine:
    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sim-point")

    def submit(self, task: PointTask) -> Future[PointOutcome]:
        return self._pool.submit(run_point, task)

    def memory_bytes(self) -> int | None:
        return available_memory_bytes()

    def describe(self) -> str:
        return f"local, {self.workers} worker{'s' if self.workers != 1 else ''}"

    def close(self) -> None:
        kill_running()
        self._pool.shutdown(wait=True, cancel_futures=True)
