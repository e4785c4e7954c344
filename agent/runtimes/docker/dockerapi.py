"""dockerd's API as the Docker plugin reads it: which container holds a Docker endpoint.

libnetwork's remote driver calls (CreateEndpoint, Join) carry Docker's endpoint id and
the sandbox's namespace path, never the container's name; dockerd's own API has it.
``/containers/json?all=1&filters={"network": [ID]}`` lists the containers on one Docker
network with, per network, the ``EndpointID`` and the ``Aliases``; dockerd records the
endpoint id there once the container's start (or ``docker network connect``) is done,
so the caller polls (``agent.runtimes.docker.naming``). The list leaves ``Aliases`` empty
(dockerd 28 fills it only in ``/containers/ID/json``), so aliases are read from there
(``inspect_target``, ``aliases_in``).

Owns: one GET over dockerd's Unix socket with h11 (the HTTP/1.1 state machine the
plugin server uses too), bounded (response body at most ``MAX_RESPONSE`` bytes, the
whole exchange ``TIMEOUT`` seconds), errors as one line (``DockerApiError``); reading
the list into the container's name and aliases (``find_container``, pure).
Does not: rename endpoints (``naming``) or serve the plugin socket (``server``).
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import h11
import trio

MAX_RESPONSE = 8 << 20
"""Bytes of a response body read at most (a container is ~2 KiB in the list)."""
MAX_HEADER = 64 << 10
TIMEOUT = 5.0
MAX_ALIASES = 32


class DockerApiError(Exception):
    """dockerd could not be asked, or answered something else than the list: one line."""

    def __init__(self, msg: str, *, unreachable: bool = False) -> None:
        super().__init__(" ".join(msg.split()))
        self.unreachable = unreachable
        """dockerd's socket could not be connected to (no dockerd, wrong path)."""


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    """Docker's name without the leading ``/``."""
    aliases: tuple[str, ...]
    """The endpoint's DNS aliases on that network (``--network-alias``, the short id)."""


def containers_target(docker_network: str) -> str:
    """The request target listing the containers (running or not) on one Docker network."""
    filters = json.dumps({"network": [docker_network]}, separators=(",", ":"))
    return "/containers/json?all=1&filters=" + urllib.parse.quote(filters, safe="")


def inspect_target(container_id: str) -> str:
    """The request target of one container's inspect (``docker inspect``)."""
    return "/containers/" + urllib.parse.quote(container_id, safe="") + "/json"


def aliases_in(inspect: Any, endpoint_id: str) -> tuple[str, ...]:
    """The ``Aliases`` of the network entry with ``EndpointID`` ``endpoint_id`` in a
    container's inspect; () when there is none. Anything malformed is skipped."""
    settings = inspect.get("NetworkSettings") if isinstance(inspect, dict) else None
    networks = settings.get("Networks") if isinstance(settings, dict) else None
    if not isinstance(networks, dict):
        return ()
    for entry in networks.values():
        if isinstance(entry, dict) and entry.get("EndpointID") == endpoint_id:
            raw = entry.get("Aliases")
            return tuple(a for a in raw if isinstance(a, str))[:MAX_ALIASES] if isinstance(raw, list) else ()
    return ()


def find_container(listing: Any, endpoint_id: str) -> Container | None:
    """The container of ``/containers/json`` whose network entry has ``EndpointID``
    ``endpoint_id``; None when there is none (yet). Anything malformed is skipped."""
    if not isinstance(listing, list):
        return None
    for item in listing:
        if not isinstance(item, dict):
            continue
        settings = item.get("NetworkSettings")
        networks = settings.get("Networks") if isinstance(settings, dict) else None
        if not isinstance(networks, dict):
            continue
        for entry in networks.values():
            if not isinstance(entry, dict) or entry.get("EndpointID") != endpoint_id:
                continue
            names = item.get("Names")
            first = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else ""
            name = first.lstrip("/")
            if not name:
                return None
            raw = entry.get("Aliases")
            aliases = tuple(a for a in raw if isinstance(a, str))[:MAX_ALIASES] if isinstance(raw, list) else ()
            cid = item.get("Id")
            return Container(cid if isinstance(cid, str) else "", name, aliases)
    return None


async def get_json(socket_path: str, target: str, *, limit: int = MAX_RESPONSE,
                   within: float = TIMEOUT) -> Any:
    """GET ``target`` from dockerd at ``socket_path``; the decoded JSON body of a 200.
    DockerApiError otherwise (``unreachable`` when the socket cannot be connected)."""
    try:
        with trio.fail_after(within):
            try:
                stream = await trio.open_unix_socket(socket_path)
            except OSError as exc:
                raise DockerApiError(f"dockerd at {socket_path}: {exc.strerror or exc}", unreachable=True) from None
            async with stream:
                status, body = await _exchange(stream, target, limit)
    except trio.TooSlowError:
        raise DockerApiError(f"dockerd at {socket_path} did not answer within {within:g}s") from None
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise DockerApiError(f"dockerd at {socket_path}: {exc}") from None
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DockerApiError(f"dockerd at {socket_path}: the answer to {target[:60]} is not JSON") from None
    if status != 200:
        message = value.get("message") if isinstance(value, dict) else None
        raise DockerApiError(f"dockerd at {socket_path} answered {status}: {str(message or '')[:200]}")
    return value


async def _exchange(stream: trio.SocketStream, target: str, limit: int) -> tuple[int, bytes]:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER)
    request = h11.Request(method="GET", target=target,
                          headers=[("Host", "docker"), ("Accept", "application/json"), ("Connection", "close")])
    await stream.send_all(b"".join(conn.send(e) or b"" for e in (request, h11.EndOfMessage())))
    status = 0
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            length = dict(event.headers).get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                raise DockerApiError(f"dockerd's answer to {target[:60]} is larger than {limit} bytes")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise DockerApiError(f"dockerd's answer to {target[:60]} is larger than {limit} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise DockerApiError("dockerd closed the connection before answering")
