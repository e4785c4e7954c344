"""systemd's service notification protocol (sd_notify), without libsystemd.

Owns: reading ``$NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for the
abstract namespace), ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``; sending
``KEY=VALUE`` datagrams (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``,
``STATUS=...``). Sending never blocks and never raises: a missing or full
socket costs a debug line, not the agent. Outside systemd (no
``$NOTIFY_SOCKET``) ``from_environment`` returns None and nothing is sent.
Does not: decide when the agent is ready or alive (``agent.service``).
Reference: sd_notify(3), sd_watchdog_enabled(3), systemd.service(5) Type=notify.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("agent.sdnotify")

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes | None:
    """The AF_UNIX address of ``$NOTIFY_SOCKET``; None for what we cannot use (vsock:...)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: MutableMapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None.

    None when the watchdog is off, the value is malformed, or ``$WATCHDOG_PID``
    names another process (the variables were inherited, not meant for us).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != (os.getpid() if pid is None else pid)):
        return None
    return int(usec) / 2_000_000


class Notifier:
    """A datagram socket connected to systemd's notification socket."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self.counts: dict[str, int] = {}
        """Messages sent, by their first key (READY, WATCHDOG, ...), for ``agentctl status``."""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> tuple[Notifier | None, float | None]:
        """(notifier or None, watchdog interval or None); by default the variables are
        removed so that child processes do not inherit them (as sd_notify's unset_environment)."""
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        interval = watchdog_interval(env)
        if unset:
            for name in _VARIABLES:
                env.pop(name, None)
        address = socket_address(value) if value else None
        if value and address is None:
            log.warning("event=sd-notify-unsupported socket=%s", value)
        if address is None:
            return None, None
        return cls(address), interval

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False (and a debug line) on failure."""
        message = "\n".join(fields)
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.debug("event=sd-notify-failed message=%s error=%s", fields[0] if fields else "", exc.errno)
            return False
        key = message.partition("=")[0]
        self.counts[key] = self.counts.get(key, 0) + 1
        return True

    def close(self) -> None:
        self._sock.close()
