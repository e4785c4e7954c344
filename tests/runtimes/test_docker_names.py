"""Docker endpoints named after their containers (issue 12, item 3), the pure parts.

The rename of a published endpoint row (``Tables.rename_endpoint``) reaching the
network's peers without changing the endpoint, and the Docker API answers
(``agent.runtimes.docker.dockerapi``) read into a container's name, bounded.
The real dockerd case is in tests/runtimes/test_docker_plugin.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gossip.tables.rows import TableError
from tests.stateful.tablesnet import cluster


def test_rename_reaches_peers_and_keeps_the_endpoint() -> None:
    net = cluster(2)
    net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"]))
    net.wait(lambda: all(n.tables.networks() for n in net.nodes.values()), timeout=60)
    ep = net.call("n0", lambda t: t.create_endpoint(net.now, "web"))
    other = net.call("n0", lambda t: t.create_endpoint(net.now, "web", name="db"))
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="peer"))
    net.run_for(0.5)
    assert ep.name == f"ep-{ep.id[:12]}"
    renamed = net.call("n0", lambda t: t.rename_endpoint(net.now, ep.id, "web-a"))
    assert (renamed.id, renamed.ipv4, renamed.mac, renamed.created) == (ep.id, ep.ipv4, ep.mac, ep.created)
    net.run_for(0.5)
    seen = {e.id: e.name for e in net.nodes["n1"].tables.endpoints()}
    assert seen[ep.id] == "web-a" and seen[other.id] == "db"
    # a name taken on this node, or not a valid name, is refused and changes nothing
    with pytest.raises(TableError, match="already exists"):
        net.call("n0", lambda t: t.rename_endpoint(net.now, ep.id, "db"))
    with pytest.raises(TableError, match="invalid endpoint name"):
        net.call("n0", lambda t: t.rename_endpoint(net.now, ep.id, "bad name"))
    assert net.nodes["n0"].tables.find_endpoint(ep.id).name == "web-a"
    # the same name again: nothing to send
    assert net.call("n0", lambda t: t.rename_endpoint(net.now, ep.id, "web-a")).name == "web-a"


# -- dockerd's answers --------------------------------------------------------------------------

LISTING = [
    {"Id": "c" * 64, "Names": ["/web-b"], "NetworkSettings": {"Networks": {
        "blue": {"EndpointID": "e2" * 32, "Aliases": ["cccccccccccc", "www"]}}}},
    {"Id": "a" * 64, "Names": ["/web-a"], "NetworkSettings": {"Networks": {
        "blue": {"EndpointID": "e1" * 32, "Aliases": None},
        "green": {"EndpointID": "e3" * 32}}}},
]


def test_find_container_by_endpoint_id() -> None:
    from agent.runtimes.docker.dockerapi import Container, find_container

    assert find_container(LISTING, "e1" * 32) == Container("a" * 64, "web-a", ())
    assert find_container(LISTING, "e3" * 32) == Container("a" * 64, "web-a", ())
    assert find_container(LISTING, "e2" * 32) == Container("c" * 64, "web-b", ("cccccccccccc", "www"))
    assert find_container(LISTING, "ff" * 32) is None  # not (yet) recorded by dockerd
    junk: Any
    for junk in (None, {}, [1, "x", {"NetworkSettings": 5}, {"NetworkSettings": {"Networks": []}}],
                 [{"Names": [], "NetworkSettings": {"Networks": {"n": {"EndpointID": "e1" * 32}}}}]):
        assert find_container(junk, "e1" * 32) is None


def test_aliases_in_an_inspect_by_endpoint_id() -> None:
    from agent.runtimes.docker.dockerapi import aliases_in, inspect_target

    inspect = {"NetworkSettings": {"Networks": {"a": {"EndpointID": "x", "Aliases": ["no"]},
                                                "b": {"EndpointID": "y", "Aliases": ["db", 5]}}}}
    assert aliases_in(inspect, "y") == ("db",)
    assert aliases_in(inspect, "z") == ()
    for junk in (None, [], {"NetworkSettings": []}, {"NetworkSettings": {"Networks": {"b": {"EndpointID": "y"}}}}):
        assert aliases_in(junk, "y") == ()
    assert inspect_target("ab/c") == "/containers/ab%2Fc/json"


def test_containers_target_filters_by_network() -> None:
    from urllib.parse import parse_qs, urlsplit

    from agent.runtimes.docker.dockerapi import containers_target

    url = urlsplit(containers_target("d" * 64))
    assert url.path == "/containers/json"
    assert parse_qs(url.query) == {"all": ["1"], "filters": ['{"network":["' + "d" * 64 + '"]}']}


async def _serve_once(path: str, answer: bytes, ready: Any) -> None:
    """A one-connection HTTP server on ``path`` that reads the request head and sends ``answer``."""
    import socket as stdsocket

    import trio

    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(1)
    ready.set()
    conn, _ = await sock.accept()
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await conn.recv(4096)
        assert data.startswith(b"GET /containers/json")
        await conn.send(answer)
    sock.close()


def _answer(status: int, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
            .encode() + body)


@pytest.mark.parametrize(("answer", "expect"), [
    (_answer(200, json.dumps(LISTING).encode()), None),
    (_answer(500, b'{"message": "boom"}'), "answered 500: boom"),
    (_answer(200, b"not json"), "is not JSON"),
    (_answer(200, b"[]", length=1 << 30), "larger than"),
    (_answer(200, b"[" + b" " * 5000 + b"]"), "larger than"),
    (b"garbage\r\n\r\n", "dockerd at"),
    (b"", "dockerd at"),
])
def test_get_json_is_bounded_and_one_line(tmp_path: Path, answer: bytes, expect: str | None) -> None:
    import trio

    from agent.runtimes.docker.dockerapi import DockerApiError, get_json

    path = str(tmp_path / "docker.sock")

    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(_serve_once, path, answer, ready)
            await ready.wait()
            try:
                return await get_json(path, "/containers/json?all=1", limit=4096, within=10)
            except DockerApiError as exc:
                return exc

    result = trio.run(main)
    if expect is None:
        assert result == LISTING
    else:
        assert isinstance(result, Exception) and expect in str(result) and "\n" not in str(result), result


def test_get_json_unreachable(tmp_path: Path) -> None:
    import trio

    from agent.runtimes.docker.dockerapi import DockerApiError, get_json

    with pytest.raises(DockerApiError) as info:
        trio.run(get_json, str(tmp_path / "none.sock"), "/containers/json")
    assert info.value.unreachable and "none.sock" in str(info.value)


def test_namer_without_dockerd_keeps_the_name_and_warns_once(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """No dockerd on the configured socket: endpoints keep ``ep-<id>``; one warning for
    several endpoints."""
    import logging

    import trio

    from agent.runtimes.docker.context import Context
    from agent.runtimes.docker.naming import Namer
    from agent.runtimes.docker.state import DockerEndpoint

    renamed: list[tuple[str, str]] = []

    class FakeOverlay:
        async def rename_endpoint(self, endpoint: str, name: str) -> None:
            renamed.append((endpoint, name))

    async def main() -> Namer:
        ctx = Context(FakeOverlay(), "p")  # type: ignore[arg-type]
        namer = Namer(ctx, str(tmp_path / "none.sock"))
        async with trio.open_nursery() as nursery:
            namer.nursery = nursery
            for k in range(3):
                ctx.state.endpoints[f"d{k}"] = DockerEndpoint(f"d{k}", "net", f"ep{k}", f"10.0.0.{k + 2}")
                namer.joined(f"d{k}", f"ep{k}", "net")
        return namer

    with caplog.at_level(logging.INFO, logger="agent.runtimes.docker"):
        namer = trio.run(main)
    assert renamed == [] and (namer.renamed, namer.kept) == (0, 3) and not namer.pending
    warnings = [r for r in caplog.records if "docker-api-unreachable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_namer_polls_until_dockerd_lists_the_endpoint(tmp_path: Path) -> None:
    """dockerd lists the endpoint id only once the start is done: the first answers lack
    it; the endpoint is renamed to the container's name when it shows up."""
    import socket as stdsocket

    import trio

    from agent.runtimes.docker.context import Context
    from agent.runtimes.docker.naming import Namer
    from agent.runtimes.docker.state import DockerEndpoint

    path = str(tmp_path / "docker.sock")
    inspect = {"Id": "c" * 64, "NetworkSettings": {"Networks": {"blue": {
        "EndpointID": "e2" * 32, "Aliases": ["www", "Web-B", "not valid", "db"]}}}}
    answers = [b"[]", b"[]", json.dumps(LISTING).encode(), json.dumps(inspect).encode()]
    renamed: list[tuple[str, str]] = []
    aliased: list[tuple[str, list[str]]] = []

    class FakeOverlay:
        async def rename_endpoint(self, endpoint: str, name: str) -> Any:
            renamed.append((endpoint, name))
            return type("Ep", (), {"name": name})()

        async def set_aliases(self, endpoint: str, names: list[str]) -> tuple[str, ...]:
            aliased.append((endpoint, list(names)))
            return tuple(names)

    async def serve(sock: trio.socket.SocketType) -> None:
        for body in answers:
            conn, _ = await sock.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await conn.recv(4096)
                await conn.send(_answer(200, body))

    async def main() -> Namer:
        sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(4)
        ctx = Context(FakeOverlay(), "p")  # type: ignore[arg-type]
        namer = Namer(ctx, path)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, sock)
                namer.nursery = nursery
                ctx.state.endpoints["e2" * 32] = DockerEndpoint("e2" * 32, "net", "ep-cluster", "10.0.0.2")
                namer.joined("e2" * 32, "ep-cluster", "net")
                namer.joined("e2" * 32, "ep-cluster", "net")  # a second Join while pending: one task
        sock.close()
        return namer

    namer = trio.run(main)
    assert renamed == [("ep-cluster", "web-b")] and namer.renamed == 1 and not namer.pending
    # the aliases come from the container's inspect (the list has none with dockerd 28),
    # without the name itself and without what is no endpoint name
    assert aliased == [("ep-cluster", ["www", "db"])]
