"""Execution engines for sweeps: where the points of a sweep run.

Owns: the one small interface every engine implements (``Engine``: submit a
``PointTask``, poll its ``Ticket``, close), the engine registry and the
argument checks shared by the command line (engine name, worker count,
scheduler address, memory limit). Does not own: what a point does
(``point.py``: one fresh ``python -m sim`` process per point) or the sweep's
plan, resume, progress and files (``sim/sweep.py``).

Engines: ``local`` (a pool over this machine's cores) and ``dask``
(``dask.distributed``; a ``LocalCluster`` when no scheduler is given). Adding
another (Ray, a batch queue) means one module with a class like ``LocalEngine``
and one line in ``make_engine``.
"""

from __future__ import annotations

from typing import Protocol

from sim.engines.base import EngineError, default_workers
from sim.engines.point import PointOutcome, PointTask

__all__ = ["ENGINES", "Engine", "EngineError", "PointOutcome", "PointTask", "Ticket", "default_workers",
           "make_engine", "parse_bytes"]

ENGINES = ("local", "dask")


class Ticket(Protocol):
    """A submitted point: ``concurrent.futures.Future`` and ``distributed.Future`` both fit."""

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> PointOutcome: ...


class Engine(Protocol):
    name: str
    workers: int

    def submit(self, task: PointTask) -> Ticket:
        """Start ``run_point(task)`` somewhere; never blocks for long."""
        ...

    def memory_bytes(self) -> int | None:
        """Memory the engine's points may use together, if the engine knows it."""
        ...

    def describe(self) -> str: ...

    def close(self) -> None:
        """Stop everything this engine started (children, local clusters)."""
        ...


def parse_bytes(text: str) -> int:
    """``4G``, ``512M``, ``2.5GiB``, ``1000000`` → bytes (powers of 1024 for the suffixes)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1
    for suffix, mult in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, scale = t[:-1], mult
            break
    try:
        value = float(t) * scale
    except ValueError:
        raise EngineError(f"--memory-limit: {text!r} is not a size (e.g. 4G, 512M)") from None
    if not value > 0:
        raise EngineError("--memory-limit must be positive")
    return int(value)


def make_engine(name: str, workers: int | None, scheduler: str | None) -> Engine:
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r} (engines: {', '.join(ENGINES)})")
    if workers is not None and workers < 1:
        raise EngineError("--workers must be at least 1")
    if scheduler is not None and name != "dask":
        raise EngineError("--scheduler needs --engine dask")
    if name == "local":
        from sim.engines.local import LocalEngine
        return LocalEngine(workers or default_workers())
    from sim.engines.daskengine import DaskEngine
    return DaskEngine(workers, scheduler)
