"""The Docker plugin's HTTP side and its saved state, without Docker: bounds on hostile input,
the error shape dockerd shows, keep-alive, and a state record that survives a round trip
and drops what does not parse."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.runtimes.docker import server as srv
from agent.runtimes.docker.plugin import plugin_name
from agent.runtimes.docker.state import (
    DockerEndpoint,
    DockerNetwork,
    PluginState,
    Pool,
    Reservation,
)


async def echo(method: str, req: dict[str, Any]) -> dict[str, Any]:
    if method == "Refuse.Me":
        raise srv.PluginError("overlay-agent: no")
    if method.startswith("Unknown"):
        raise srv.UnknownMethod()
    return {"method": method, "got": req}


def _request(path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw bytes, read one response (blocking client, as dockerd's is to us)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head:
            return 0, {}
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(body) < length:
            body += s.recv(65536)
        status = int(head.split(b" ")[1])
        return status, json.loads(body)


def post(method: str, body: bytes) -> bytes:
    return (f"POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Type: {srv.CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    path = str(tmp_path / "plugins" / "oa-test.sock")
    server = srv.Server(srv.open_socket(path), path, echo)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield path, server
        nursery.cancel_scope.cancel()
    server.close()
    assert not await trio.Path(path).exists()


async def call(path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    return await trio.to_thread.run_sync(_request, path, raw)


async def test_calls_errors_and_bounds(served: Any) -> None:
    path, server = served
    assert await call(path, post("Plugin.Activate", b"")) == (200, {"method": "Plugin.Activate", "got": {}})
    assert await call(path, post("X.Y", b'{"a": [1]}')) == (200, {"method": "X.Y", "got": {"a": [1]}})
    assert await call(path, post("Refuse.Me", b"{}")) == (500, {"Err": "overlay-agent: no"})
    status, reply = await call(path, post("Unknown.Method", b"{}"))
    assert status == 404 and "unknown plugin method" in reply["Err"]
    status, reply = await call(path, post("X.Y", b"{not json"))
    assert status == 500 and reply["Err"] == "request body is not JSON"
    status, reply = await call(path, post("X.Y", b"[1, 2]"))
    assert status == 500 and "not a JSON object" in reply["Err"]
    deep = b'{"a": ' * 40 + b"1" + b"}" * 40
    status, reply = await call(path, post("X.Y", deep))
    assert status == 500 and "nested deeper" in reply["Err"]
    huge = (f"POST /X.Y HTTP/1.1\r\nHost: p\r\nContent-Length: {srv.MAX_BODY + 1}\r\n\r\n").encode()
    status, reply = await call(path, huge)
    assert status == 413
    status, _ = await call(path, b"GET /Plugin.Activate HTTP/1.1\r\nHost: p\r\n\r\n")
    assert status == 404
    assert await call(path, b"garbage\r\n\r\n") == (0, {})  # a protocol error closes the connection
    assert server.calls >= 8


async def test_keep_alive_serves_several_requests(served: Any) -> None:
    path, _ = served

    def two() -> list[bytes]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            out = []
            for m in ("A.One", "B.Two"):
                s.sendall(post(m, b"{}"))
                data = b""
                while not data.endswith(b"}"):
                    data += s.recv(65536)
                out.append(data)
            return out

    replies = await trio.to_thread.run_sync(two)
    assert b'"A.One"' in replies[0] and b'"B.Two"' in replies[1]


async def test_socket_in_use_or_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    path.write_text("")
    with pytest.raises(srv.SocketError, match="not a socket"):
        srv.open_socket(str(path))
    path.unlink()
    first = srv.open_socket(str(path))
    try:
        with pytest.raises(srv.SocketError, match="in use"):
            srv.open_socket(str(path))
    finally:
        first.close()
    srv.open_socket(str(path)).close()  # a stale socket file is replaced


def test_plugin_name_is_the_socket_file_name() -> None:
    assert plugin_name("/run/docker/plugins/overlay-agent.sock") == "overlay-agent"
    assert plugin_name("/tmp/x") == "x"


def test_state_round_trip_and_malformed_entries() -> None:
    s = PluginState()
    s.pools["p"] = Pool("p", "10.0.0.0/24", None, "blue")
    s.networks["n"] = DockerNetwork("n", "cid", "p", True)
    s.reservations["e"] = Reservation("10.0.0.2", "p", "e", "ovde", "d", released=False)
    s.endpoints["d"] = DockerEndpoint("d", "n", "e", "10.0.0.2", "/run/netns/x")
    notes: list[str] = []
    again = PluginState.from_json(json.loads(json.dumps(s.to_json())), notes)
    assert again == s and not notes
    record = s.to_json()
    record["pools"].append({"id": 5})
    record["networks"].append("junk")
    record["endpoints"][0]["address"] = None
    again = PluginState.from_json(record, notes)
    assert list(again.pools) == ["p"] and list(again.networks) == ["n"] and not again.endpoints
    assert len(notes) == 3
    assert PluginState.from_json({"version": 99}, notes) == PluginState()
    assert PluginState.from_json(None, []) == PluginState()
