"""What every engine module shares: the engine error and this machine's resources.

Owns: ``EngineError`` (one-line errors, exit 2), the default worker count and
the memory new processes can use here. Does not own: the engines themselves.
"""

from __future__ import annotations

import os


class EngineError(ValueError):
    """An engine that cannot be built from its arguments (reported in one line, exit 2)."""


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of this machine (what new processes can use without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
