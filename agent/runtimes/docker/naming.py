"""Docker endpoints named after their containers (names for DNS across hosts).

RequestAddress publishes a Docker endpoint's cluster row before Docker says which
container it is for, so the row starts as ``ep-<id>``. After Join, one task per
endpoint asks dockerd (``dockerapi``, the socket of config ``docker_api_socket``) for
the container whose network entry has the endpoint's id (dockerd records it once the
start or ``docker network connect`` is done: polled with a growing delay, for at most
``NAME_WAIT``) and renames the row to the container's name
(``Overlay.rename_endpoint``), which every peer then sees. The endpoint keeps its
``ep-<id>`` name when dockerd cannot be reached (logged once, until dockerd answers
again), when the container is not found in time, or when the name is taken by another
endpoint of this host (a container on two of our networks: the first endpoint gets it).
The container's aliases on that network (``--network-alias``, ``docker network connect
--alias``; dockerd lists them with the endpoint, libnetwork's driver calls do not carry
them) are published as the endpoint's aliases (``Overlay.set_aliases``,
``gossip.tables.aliases``), without the name itself; aliases that are no valid endpoint
name are left out (logged).

Owns: the ``Namer`` (its tasks run in the plugin's nursery) and its counters.
Does not: speak HTTP (``dockerapi``) or hold the plugin's state (``context``).
"""

from __future__ import annotations

import dataclasses
import logging

import trio

from agent.control import protocol as api
from agent.log import kv
from agent.runtimes.docker import dockerapi
from agent.runtimes.docker.context import Context
from agent.runtimes.docker.dockerapi import Container, DockerApiError
from gossip.tables import aliases
from gossip.tables.rows import TableError, check_name

log = logging.getLogger("agent.runtimes.docker")

NAME_WAIT = 30.0
"""dockerd lists the endpoint id when the container's start is done; under load that
takes seconds."""
FIRST_DELAY = 0.05
MAX_DELAY = 1.0
MAX_PENDING = 1024
"""Endpoints waiting for their name at most (beyond: they keep ``ep-<id>``)."""


class Namer:
    def __init__(self, ctx: Context, api_socket: str) -> None:
        self.ctx = ctx
        self.api_socket = api_socket
        self.nursery: trio.Nursery | None = None
        self.pending: set[str] = set()
        self.warned = False
        self.renamed = 0
        self.kept = 0

    def joined(self, docker_endpoint: str, endpoint: str, docker_network: str) -> None:
        """Join of ``docker_endpoint`` answered: name cluster endpoint ``endpoint`` later."""
        if self.nursery is None or docker_endpoint in self.pending or len(self.pending) >= MAX_PENDING:
            return
        self.pending.add(docker_endpoint)
        self.nursery.start_soon(self._name, docker_endpoint, endpoint, docker_network)

    async def _name(self, docker_endpoint: str, endpoint: str, docker_network: str) -> None:
        try:
            found = await self._find(docker_endpoint, docker_network)
            if found is None or docker_endpoint not in self.ctx.state.endpoints:
                self.kept += 1
                return
            await self._publish_aliases(endpoint, await self._with_aliases(docker_endpoint, found))
            try:
                ep = await self.ctx.overlay.rename_endpoint(endpoint, found.name)
            except api.ApiError as exc:
                self.kept += 1
                log.info(kv("docker-endpoint-name-kept", endpoint=endpoint[:12], container=found.name,
                            reason=str(exc)))
                return
            self.renamed += 1
            log.info(kv("docker-endpoint-named", endpoint=endpoint[:12], name=ep.name,
                        container=found.id[:12], aliases=",".join(found.aliases)))
        finally:
            self.pending.discard(docker_endpoint)

    async def _with_aliases(self, docker_endpoint: str, found: Container) -> Container:
        """``found`` with the aliases of its inspect (the list leaves them out); as it is
        when the inspect fails."""
        if not found.id:
            return found
        try:
            inspect = await dockerapi.get_json(self.api_socket, dockerapi.inspect_target(found.id))
        except DockerApiError as exc:
            log.info(kv("docker-aliases-unknown", container=found.id[:12], reason=str(exc)))
            return found
        got = dockerapi.aliases_in(inspect, docker_endpoint)
        return dataclasses.replace(found, aliases=got) if got else found

    async def _publish_aliases(self, endpoint: str, found: Container) -> None:
        names = [a for a in found.aliases if a.lower() != found.name.lower()]
        good = [a for a in names if _valid(a)]
        if len(good) < len(names):
            log.info(kv("docker-aliases-skipped", endpoint=endpoint[:12],
                        aliases=",".join(a for a in names if a not in good),
                        reason="not a valid endpoint name (letters, digits, _ . -; at most 64)"))
        if not good:
            return
        try:
            await self.ctx.overlay.set_aliases(endpoint, good[:aliases.MAX_ALIASES])
        except api.ApiError as exc:
            log.info(kv("docker-aliases-not-published", endpoint=endpoint[:12], reason=str(exc)))

    async def _find(self, docker_endpoint: str, docker_network: str) -> Container | None:
        deadline = trio.current_time() + NAME_WAIT
        delay = FIRST_DELAY
        target = dockerapi.containers_target(docker_network)
        while docker_endpoint in self.ctx.state.endpoints:
            try:
                listing = await dockerapi.get_json(self.api_socket, target)
            except DockerApiError as exc:
                if not self.warned:
                    self.warned = True
                    log.warning(kv("docker-api-unreachable", socket=self.api_socket, reason=str(exc),
                                   effect="Docker endpoints keep their ep-<id> names"))
                return None
            self.warned = False
            found = dockerapi.find_container(listing, docker_endpoint)
            if found is not None:
                return found
            if trio.current_time() + delay > deadline:
                log.info(kv("docker-endpoint-unnamed", docker_id=docker_endpoint[:12],
                            reason=f"no container lists the endpoint after {NAME_WAIT:g}s"))
                return None
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
        return None


def _valid(name: str) -> bool:
    try:
        check_name(name, "alias")
    except TableError:
        return False
    return True
