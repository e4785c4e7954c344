"""The Docker plugin as an agent extension (``agent.service.Extension``).

Started by ``agent.__main__`` when ``docker_plugin_socket`` is set. Docker names a
legacy plugin after its socket file: ``/run/docker/plugins/overlay-agent.sock`` gives
driver and IPAM driver ``overlay-agent``; the socket is a path, so a dockerd in
another network namespace reaches it too.

Owns: the method table (``Plugin.Activate`` and every ``NetworkDriver.*`` /
``IpamDriver.*`` call dockerd makes, Discover* and the swarm-only calls included),
opening the socket at set-up (a problem is a ``StartupError``), loading the persisted
state at start (after the overlay restored its endpoints, so reservations whose
endpoint did not survive are dropped), the ``naming.Namer`` (dockerd's API socket from
config ``docker_api_socket``; restored endpoints still unnamed are looked up again),
serving until the agent stops (then the
socket file goes), and a status section. Does not: implement the methods
(``driver``, ``ipam``) or parse HTTP (``server``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from agent.log import kv
from agent.runtimes.docker.context import Context
from agent.runtimes.docker.driver import Driver
from agent.runtimes.docker.ipam import Ipam
from agent.runtimes.docker.naming import Namer
from agent.runtimes.docker.server import Server, SocketError, UnknownMethod, open_socket
from agent.runtimes.docker.state import RECORD, PluginState

if TYPE_CHECKING:
    from agent.control.server import ControlServer
    from agent.overlay.extension import Overlay
    from agent.runtime import Runtime

log = logging.getLogger("agent.runtimes.docker")

Method = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def plugin_name(path: str) -> str:
    """Docker's name for the plugin behind socket ``path``: the file name without ``.sock``."""
    base = os.path.basename(path)
    return base[: -len(".sock")] if base.endswith(".sock") else base


class DockerPlugin:
    def __init__(self, overlay: Overlay, path: str) -> None:
        self.path = path
        self.ctx = Context(overlay, plugin_name(path))
        self.server: Server | None = None
        self.namer: Namer | None = None
        self._notes: list[str] = []
        driver, ipam = Driver(self.ctx), Ipam(self.ctx)
        self.methods: dict[str, Method] = {
            "Plugin.Activate": self._activate,
            "NetworkDriver.GetCapabilities": driver.capabilities,
            "NetworkDriver.CreateNetwork": driver.create_network,
            "NetworkDriver.DeleteNetwork": driver.delete_network,
            "NetworkDriver.AllocateNetwork": driver.nothing,
            "NetworkDriver.FreeNetwork": driver.nothing,
            "NetworkDriver.CreateEndpoint": driver.create_endpoint,
            "NetworkDriver.DeleteEndpoint": driver.delete_endpoint,
            "NetworkDriver.EndpointOperInfo": driver.oper_info,
            "NetworkDriver.Join": driver.join,
            "NetworkDriver.Leave": driver.nothing,
            "NetworkDriver.DiscoverNew": driver.nothing,
            "NetworkDriver.DiscoverDelete": driver.nothing,
            "NetworkDriver.ProgramExternalConnectivity": driver.nothing,
            "NetworkDriver.RevokeExternalConnectivity": driver.nothing,
            "IpamDriver.GetCapabilities": ipam.capabilities,
            "IpamDriver.GetDefaultAddressSpaces": ipam.address_spaces,
            "IpamDriver.RequestPool": ipam.request_pool,
            "IpamDriver.ReleasePool": ipam.release_pool,
            "IpamDriver.RequestAddress": ipam.request_address,
            "IpamDriver.ReleaseAddress": ipam.release_address,
        }

    async def _activate(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    async def handle(self, method: str, req: dict[str, Any]) -> dict[str, Any]:
        fn = self.methods.get(method)
        if fn is None:
            raise UnknownMethod()
        log.debug(kv("docker-call", method=method))
        return await fn(req)

    # -- agent.service.Extension ------------------------------------------------------------------

    def setup(self, rt: Runtime, server: ControlServer) -> None:
        from agent.service import StartupError

        self.ctx.rt = rt
        self.namer = Namer(self.ctx, rt.config.docker_api_socket)
        self.ctx.joined = self.namer.joined
        try:
            sock = open_socket(self.path)
        except SocketError as exc:
            raise StartupError(str(exc)) from None
        self.server = Server(sock, self.path, self.handle)
        rt.status_sections.append(self.status)
        rt.warning_sources.append(lambda: list(self._notes))

    async def run(self, rt: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.server is not None
        try:
            await self._restore(rt)
            async with trio.open_nursery() as nursery:
                if self.namer is not None:
                    self.namer.nursery = nursery
                await nursery.start(self.server.serve)
                log.info(kv("docker-plugin-serving", socket=self.path, name=self.ctx.name))
                await self._name_restored()
                task_status.started()
        finally:
            self.server.close()

    async def _restore(self, rt: Runtime) -> None:
        notes: list[str] = []
        state = PluginState.from_json(rt.store.load_json(RECORD) if rt.store is not None else None, notes)
        local: set[str] = await self.ctx.read(lambda t: {e.id for e in t.local_endpoints()})
        for key, res in list(state.reservations.items()):
            if not res.released and res.endpoint not in local:
                del state.reservations[key]
                notes.append(f"docker endpoint with address {res.address} was dropped: its cluster endpoint "
                             "did not survive the restart")
        for key, dep in list(state.endpoints.items()):
            if dep.endpoint not in state.reservations:
                del state.endpoints[key]
        self.ctx.state = state
        if rt.store is None:
            notes.append("docker plugin without state_dir: its Docker networks and endpoints are "
                         "forgotten when the agent restarts")
        self._notes = notes
        for note in notes:
            log.warning(kv("docker-plugin-restore", note=note))
        if state.networks or state.pools:
            log.info(kv("docker-plugin-restored", networks=len(state.networks), endpoints=len(state.endpoints)))
            await self.ctx.save()

    async def _name_restored(self) -> None:
        """Restored endpoints still named ``ep-<id>`` (the agent stopped before their
        container was found, or dockerd was unreachable) are looked up again."""
        if self.namer is None:
            return
        names: dict[str, str] = await self.ctx.read(lambda t: {e.id: e.name for e in t.local_endpoints()})
        for dep in list(self.ctx.state.endpoints.values()):
            if dep.sandbox is not None and names.get(dep.endpoint, "").startswith("ep-"):
                self.namer.joined(dep.id, dep.endpoint, dep.docker_network)

    def status(self) -> dict[str, Any]:
        s = self.ctx.state
        return {"docker_plugin": {
            "socket": self.path,
            "name": self.ctx.name,
            "networks": len(s.networks),
            "endpoints": len(s.endpoints),
            "calls": self.server.calls if self.server else 0,
            "refused": self.server.errors if self.server else 0,
            "named": self.namer.renamed if self.namer else 0,
        }}
