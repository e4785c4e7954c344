"""What the Docker plugin's handlers share: the overlay, the plugin state, one lock, persistence.

Owns: ``Context`` (serialises every call under one lock, so Docker's concurrent
requests never interleave their bookkeeping; saves the state after each change;
turns the overlay's ``ApiError`` into the user's ``PluginError``) and the checks of
request fields (``text``, ``opt_text``, ``mapping``). Does not: implement a method
(``ipam``, ``driver``).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from agent.control import protocol as api
from agent.log import kv
from agent.runtimes.docker.server import PluginError
from agent.runtimes.docker.state import RECORD, PluginState
from gossip.tables.replica import Tables

if TYPE_CHECKING:
    from agent.overlay.extension import Overlay
    from agent.runtime import Runtime

log = logging.getLogger("agent.runtimes.docker")

T = TypeVar("T")

GATEWAY_OPTION = "com.docker.network.gateway"
"""Docker's label for a gateway: RequestPool's reply data, RequestAddress's request type."""


class Context:
    def __init__(self, overlay: Overlay, name: str) -> None:
        self.overlay = overlay
        self.name = name
        """The plugin's name (its socket's file name): what users pass to ``-d``/``--ipam-driver``."""
        self.state = PluginState()
        self.lock = trio.Lock()
        self.rt: Runtime | None = None
        self.save_errors = 0
        self.joined: Callable[[str, str, str], None] | None = None
        """Told (Docker endpoint, cluster endpoint, Docker network) after each Join: the
        ``naming.Namer`` names the endpoint after its container."""

    async def save(self) -> None:
        rt = self.rt
        if rt is None or rt.store is None:
            return
        if not await rt.persister.save_json(RECORD, self.state.to_json()):
            self.save_errors += 1
            log.warning(kv("docker-plugin-not-persisted", error=rt.persister.last_error))

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` under the lock; the overlay's refusals become the user's error line."""
        async with self.lock:
            try:
                return await fn()
            except api.ApiError as exc:
                raise PluginError(f"overlay-agent: {exc}") from None

    async def read(self, fn: Callable[[Tables], T]) -> T:
        try:
            result: T = await self.overlay.read(fn)
        except api.ApiError as exc:
            raise PluginError(f"overlay-agent: {exc}") from None
        return result


# -- request fields ------------------------------------------------------------------------


def opt_text(req: dict[str, Any], key: str) -> str | None:
    value = req.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 1024:
        raise PluginError(f"overlay-agent: {key} must be a string")
    return value


def text(req: dict[str, Any], key: str) -> str:
    value = opt_text(req, key)
    if value is None:
        raise PluginError(f"overlay-agent: missing {key}")
    return value


def mapping(req: dict[str, Any], key: str) -> dict[str, Any]:
    value = req.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PluginError(f"overlay-agent: {key} must be an object")
    return value


def gateway(subnet: str) -> tuple[str, int]:
    """The cluster network's gateway address (its first) and the prefix length."""
    net = ipaddress.ip_network(subnet)
    return str(net.network_address + 1), net.prefixlen


def address_of(cidr: str) -> str:
    """``10.0.0.5/24`` or ``10.0.0.5`` -> ``10.0.0.5``. PluginError."""
    try:
        return str(ipaddress.ip_interface(cidr).ip)
    except ValueError:
        raise PluginError(f"overlay-agent: {cidr!r} is not an IP address") from None
