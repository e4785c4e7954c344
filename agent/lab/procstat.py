"""Read a process's identity, CPU time and memory from /proc.

Owns: the small /proc parsers the lab harness and the benchmarks share
(start time to tell a pid from its reuse, liveness, utime+stime, VmRSS, the
machine-wide softnet drop counter). Does not start or signal processes.
Reference: proc(5) — /proc/PID/stat fields 14, 15 (utime, stime) and 22
(starttime), /proc/PID/status VmRSS; /proc/net/softnet_stat column 2 (drops).
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may itself contain spaces and parentheses: split after the last ')'.
    close = text.rfind(")")
    if close < 0:
        return None
    return text[close + 2 :].split()


def start_time(pid: int) -> int | None:
    """Clock ticks after boot at which ``pid`` started; None if it does not exist."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def is_alive(pid: int, started: int | None = None) -> bool:
    """True if ``pid`` runs, is not a zombie, and (when given) has that start time.

    The start time guards against pid reuse: a recorded pid only names our process
    while its start time still matches.
    """
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (tick resolution), None if gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 13:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, None if gone (or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def softnet_drops() -> int | None:
    """Packets the kernel dropped because a CPU's input backlog was full (all CPUs).

    veth traffic passes through that backlog, so a non-zero delta during a
    measurement means the testbed, not the agent, lost packets.
    """
    try:
        with open("/proc/net/softnet_stat", encoding="ascii") as f:
            return sum(int(line.split()[1], 16) for line in f if line.strip())
    except (OSError, ValueError, IndexError):
        return None
