"""Endpoints live and die with their container: withdraw an endpoint whose namespace went away.

When a container's network namespace is destroyed (the container exited, the runtime
was killed, ``ip netns del``), the kernel deletes every device in it; a veth goes as a
pair, so the host side of the endpoint (``ov-<id>``) disappears from the agent's
namespace with an RTM_DELLINK. That is the signal used here, whatever created the
endpoint (``agentctl endpoint create``, the CNI plugin, the Docker plugin):

- a multicast netlink socket (RTNLGRP_LINK) in the agent's namespace wakes a sweep on
  every deletion of an interface named like an endpoint's (``veths.is_host_ifname``);
  a lost-events overflow (ENOBUFS) wakes it too;
- the sweep lists the host-side veths present (``Plumber.existing``) and withdraws each
  local endpoint whose interface is missing (``Overlay.withdraw_vanished``: the row is
  deleted, so every peer drops its FDB and neighbour entries, and the address is free);
- a periodic sweep (``SWEEP_INTERVAL``; ``FALLBACK_INTERVAL`` when no netlink socket
  could be opened, e.g. with a fake plumber in tests) catches anything an event missed.
  No endpoint, no work.
A container that went away while the agent was down is handled at start
(``Overlay._check_interfaces``: an endpoint whose interface is gone is not restored).

Owns: the detector task and its timing. Does not: delete rows or interfaces itself
(``agent.overlay.extension.Overlay``), decide about anything but local endpoints.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

import trio

from agent.log import kv
from agent.overlay.veths import LinuxPlumber, PlumbError, host_ifname, is_host_ifname

if TYPE_CHECKING:
    from agent.overlay.extension import Overlay

log = logging.getLogger("agent.overlay.lifecycle")

SWEEP_INTERVAL = 10.0
"""Safety-net sweep while link events are watched (they are the fast path)."""
FALLBACK_INTERVAL = 1.0
"""Sweep period without link events: a vanished endpoint is withdrawn within ~1 s."""


class LinkWatch:
    """RTM_DELLINK of endpoint-shaped interfaces in the agent's namespace (blocking setup)."""

    def __init__(self, prefix: str) -> None:
        from dataplane import rtnl

        self.prefix = prefix
        self._raw = rtnl.RtnlSocket(groups=(rtnl.RTNLGRP_LINK,))
        self._sock = trio.socket.from_stdlib_socket(self._raw.sock)

    def close(self) -> None:
        self._sock.close()
        self._raw.close()

    async def next_deletion(self) -> str | None:
        """The name of the next deleted endpoint interface; None when events were lost."""
        from dataplane import rtnl

        while True:
            try:
                buf = await self._sock.recv(1 << 20)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return None
                raise
            for pos, length, mtype, _seq in rtnl.messages(buf):
                if mtype == rtnl.RTM_DELLINK:
                    name = rtnl.parse_link(buf, pos, length).name
                    if is_host_ifname(name, self.prefix):
                        return name


class Lifecycle:
    """The detector task of one ``Overlay`` (started by its ``run``)."""

    def __init__(self, overlay: Overlay, *, watch_links: bool | None = None) -> None:
        self.o = overlay
        self.watch_links = isinstance(overlay.plumber, LinuxPlumber) if watch_links is None else watch_links
        self.withdrawn = 0
        self._wake = trio.Event()

    async def run(self) -> None:
        watch: LinkWatch | None = None
        if self.watch_links:
            try:
                watch = LinkWatch(self.o.prefix)
            except OSError as exc:
                log.warning(kv("link-events-unavailable", reason=exc.strerror or str(exc),
                               fallback=f"sweep every {FALLBACK_INTERVAL:g}s"))
        try:
            async with trio.open_nursery() as nursery:
                if watch is not None:
                    nursery.start_soon(self._events, watch)
                await self._sweeps(SWEEP_INTERVAL if watch is not None else FALLBACK_INTERVAL)
        finally:
            if watch is not None:
                watch.close()

    async def _events(self, watch: LinkWatch) -> None:
        while True:
            name = await watch.next_deletion()
            if name is None:
                log.info(kv("link-events-lost", action="sweep"))
            self._wake.set()

    async def _sweeps(self, interval: float) -> None:
        while True:
            with trio.move_on_after(interval):
                await self._wake.wait()
            self._wake = trio.Event()
            if self.o.interfaces:
                await self.sweep()

    async def sweep(self) -> int:
        """Withdraw every local endpoint whose host-side interface is gone; how many."""
        o = self.o
        try:
            present = set(await trio.to_thread.run_sync(o.plumber.existing, o.prefix))
        except PlumbError as exc:
            log.warning(kv("endpoint-interfaces-unknown", reason=str(exc)))
            return 0
        count = 0
        for ep_id, info in list(o.interfaces.items()):
            name = str(info.get("host_ifname") or host_ifname(o.prefix, ep_id))
            if name not in present and await o.withdraw_vanished(ep_id, name):
                count += 1
        self.withdrawn += count
        return count
