"""A one-line progress bar on stderr for long runs.

Owns: wall-clock reporting only (simulated time never depends on it). The world
calls ``update`` every few thousand events; the bar redraws at most twice a
second, so it costs nothing measurable.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import TextIO


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (wall time lies on a shared machine)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / (1024.0 * 1024.0)
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, total: float, label: str = "", stream: TextIO | None = None,
                 enabled: bool = True, width: int = 30) -> None:
        self.total = max(total, 1e-9)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.width = width
        self.started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def update(self, sim_now: float, events: int, force: bool = False) -> None:
        if not self.enabled:
            return
        wall = time.monotonic()
        if not force and wall - self._last < 0.5:
            return
        self._last = wall
        elapsed = wall - self.started
        frac = min(1.0, max(0.0, sim_now / self.total))
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        rate = events / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0.0
        line = (f"\r{self.label}[{bar}] {sim_now:7.1f}/{self.total:.0f} s sim  "
                f"{rate:9,.0f} ev/s  wall {_clock(elapsed)}  eta {_clock(eta)}  "
                f"rss {current_rss_mib():,.0f} MiB ")
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def done(self, sim_now: float, events: int) -> None:
        if self.enabled:
            self.update(sim_now, events, force=True)
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            if self._drawn:
                self.stream.write("\n")
                self._drawn = False
            self.stream.write(text + "\n")
            self.stream.flush()
