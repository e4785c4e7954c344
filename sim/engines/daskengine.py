"""The ``dask`` engine: points as tasks on a ``dask.distributed`` cluster.

Owns: connecting to a scheduler (``--scheduler tcp://HOST:8786``) or, without
one, starting a ``LocalCluster`` of ``workers`` processes with one thread each
(no set-up on one machine), and submitting ``run_point``. Every task starts a
fresh ``python -m sim`` process on its worker (``point.py``), so workers need
this project installed, but no shared file system: the point's files come back
in its ``PointOutcome``. A worker that dies mid-point is Dask's business: the
scheduler runs the task again on another worker (its ``allowed-failures``), and
the sweep resubmits anything that still comes back lost. Does not own: the
sweep's plan, memory bound or files (``sim/sweep.py``).
"""

from __future__ import annotations

import importlib
import logging
import uuid
from typing import Any

from sim.engines.base import EngineError, available_memory_bytes, default_workers
from sim.engines.point import PointTask, run_point

CONNECT_TIMEOUT_S = 10


class DaskEngine:
    name = "dask"

    def __init__(self, workers: int | None, scheduler: str | None) -> None:
        try:
            # Through Any: distributed's constructors carry no annotations mypy accepts.
            dist: Any = importlib.import_module("distributed")
        except ImportError:
            raise EngineError("the dask engine needs dask[distributed] (pip install -e '.[sim]')") from None
        self._cluster: Any = None
        self.scheduler = scheduler
        if scheduler is None:
            n = workers or default_workers()
            # memory_limit=0: the memory is in each point's own process, which the
            # nanny does not see; the sweep bounds it instead.
            self._cluster = dist.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=0,
                                         dashboard_address=None, silence_logs=logging.ERROR)
            self._client: Any = dist.Client(self._cluster)
        else:
            if "://" not in scheduler or not scheduler.split("://", 1)[1]:
                raise EngineError(f"--scheduler {scheduler!r}: expected an address like tcp://HOST:8786")
            try:
                self._client = dist.Client(scheduler, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError, TypeError) as e:
                raise EngineError(f"cannot reach the dask scheduler at {scheduler}: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            threads = sum(int(w.get("nthreads", 1)) for w in self._workers().values())
            n = workers or threads or 1
        self.workers = n

    def _workers(self) -> dict[str, Any]:
        info: dict[str, Any] = self._client.scheduler_info()
        workers: dict[str, Any] = info.get("workers", {})
        return workers

    def submit(self, task: PointTask) -> Any:
        # pure=False and a unique key: the same point submitted again (a retry, or
        # another sweep on a shared scheduler) is a new task, not a cached result.
        key = f"sim-point-{task.name}-{task.attempt}-{uuid.uuid4().hex[:8]}"
        return self._client.submit(run_point, task, key=key, pure=False)

    def memory_bytes(self) -> int | None:
        if self._cluster is not None:
            return available_memory_bytes()
        limits = [int(w.get("memory_limit") or 0) for w in self._workers().values()]
        return sum(limits) if limits and all(limits) else None

    def describe(self) -> str:
        where = self.scheduler or "LocalCluster"
        return f"dask ({where}), {self.workers} worker{'s' if self.workers != 1 else ''}"

    def worker_pids(self) -> dict[str, int]:
        """Worker address → pid (for tests that kill a worker)."""
        import os
        pids: dict[str, int] = self._client.run(os.getpid)
        return pids

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()
