"""What the Docker plugin remembers: Docker's ids mapped to the cluster's rows.

Docker does not replay CreateNetwork or CreateEndpoint after a dockerd restart, and an
agent restart must not forget what dockerd still refers to, so all of this is kept in
the state dir (record ``docker-plugin``) and read back at start-up.

Owns: the plain values (``Pool``, ``DockerNetwork``, ``Reservation``, ``DockerEndpoint``),
``PluginState`` holding them, and its JSON form (a malformed record or entry is dropped
with a note, never fatal). Does not: talk to Docker (``driver``, ``ipam``) or to the
tables (``agent.overlay``); write files (``plugin`` through the agent's persister).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

RECORD = "docker-plugin"
VERSION = 1


@dataclass
class Pool:
    """An IPAM pool handed to Docker (RequestPool): one IPv4 subnet of a cluster network."""

    id: str
    subnet: str
    network: str | None
    """Cluster network id; None until CreateNetwork makes the network this pool asked for."""
    name: str | None = None
    """The cluster network name asked for (``--ipam-opt network=NAME``)."""
    docker_network: str | None = None
    """The Docker network that took this pool (CreateNetwork)."""
    ip_range: str | None = None
    """``--ip-range`` (RequestPool's SubPool), for a network this pool creates."""
    gateway: str | None = None
    """``--gateway`` (RequestAddress of the gateway), for a network this pool creates;
    None: the subnet's first address."""


@dataclass
class DockerNetwork:
    """A Docker network (Docker's id on this host) and the cluster network it is."""

    id: str
    network: str
    pool: str
    created: bool
    """This plugin created the cluster network (so DeleteNetwork may remove it)."""


@dataclass
class Reservation:
    """An address Docker asked for (RequestAddress): the cluster endpoint row holding it."""

    address: str
    pool: str
    endpoint: str
    """Cluster endpoint id."""
    peer: str
    """The container side of the veth pair, named so until dockerd moves and renames it."""
    docker_endpoint: str | None = None
    released: bool = False
    """DeleteEndpoint withdrew the row; Docker's ReleaseAddress for it is still to come
    (the address may meanwhile be handed out again, to another reservation)."""


@dataclass
class DockerEndpoint:
    """A Docker endpoint (CreateEndpoint .. DeleteEndpoint) and its cluster endpoint."""

    id: str
    docker_network: str
    endpoint: str
    address: str
    sandbox: str | None = None
    """Network namespace path given by Join."""


@dataclass
class PluginState:
    pools: dict[str, Pool] = field(default_factory=dict)
    networks: dict[str, DockerNetwork] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    """By cluster endpoint id."""
    endpoints: dict[str, DockerEndpoint] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "pools": [dataclasses.asdict(p) for p in self.pools.values()],
            "networks": [dataclasses.asdict(n) for n in self.networks.values()],
            "reservations": [dataclasses.asdict(r) for r in self.reservations.values()],
            "endpoints": [dataclasses.asdict(e) for e in self.endpoints.values()],
        }

    @classmethod
    def from_json(cls, record: Any, notes: list[str]) -> PluginState:
        """The state saved by ``to_json``; what does not parse is dropped and noted."""
        state = cls()
        if record is None:
            return state
        if not isinstance(record, dict) or record.get("version") != VERSION:
            notes.append("docker plugin record ignored: not a version-1 object")
            return state
        for key, kind, target, by in (
            ("pools", Pool, state.pools, "id"),
            ("networks", DockerNetwork, state.networks, "id"),
            ("reservations", Reservation, state.reservations, "endpoint"),
            ("endpoints", DockerEndpoint, state.endpoints, "id"),
        ):
            rows = record.get(key)
            for row in rows if isinstance(rows, list) else []:
                value = _parse(kind, row)
                if value is None:
                    notes.append(f"docker plugin record: a malformed {key} entry was dropped")
                    continue
                target[getattr(value, by)] = value  # type: ignore[index]
        return state


def _parse(kind: type[Any], row: Any) -> Any | None:
    """``kind(**row)`` when every field is present with the annotated shape, else None."""
    if not isinstance(row, dict):
        return None
    args: dict[str, Any] = {}
    for f in dataclasses.fields(kind):
        value = row.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        optional = "None" in str(f.type)
        want = bool if str(f.type) == "bool" else str
        if value is None and optional:
            args[f.name] = None
        elif isinstance(value, want) and (want is bool or value):
            args[f.name] = value
        else:
            return None
    return kind(**args)
