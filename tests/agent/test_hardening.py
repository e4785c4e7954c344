"""Issue 18, the agent's side: bounded JSON everywhere, requests that cannot kill the
agent, writes that fail make the request fail, corrupt state that deletes nothing, the
bridge's port limit, a stale join warning, a bad key's error.

In-process agents on loopback (the overlay with ``FakeKernel`` and ``FakePlumber``, as in
test_overlay.py); the real kernel is in tests/netns/test_agent_hardening.py.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from agent import limits, service
from agent.cli import AgentOptions
from agent.control import protocol as api
from agent.control.server import ControlServer, Op
from agent.ctl import client as ctlclient
from agent.ctl import main as ctl
from agent.overlay import extension
from agent.overlay.veths import VethSpec
from agent.runtime import Runtime
from agent.store import records
from agent.store.files import StateStore
from tests.agent.conftest import control_exchange, query, start_agent, statuses, wait_until
from tests.agent.test_overlay import FakePlumber, error_of, netns_file, start

# -- the bounded JSON decoder ---------------------------------------------------------------------


def depth(obj: Any) -> int:
    if isinstance(obj, list):
        return 1 + max((depth(x) for x in obj), default=0)
    if isinstance(obj, dict):
        return 1 + max((depth(x) for x in obj.values()), default=0)
    return 0


@pytest.mark.parametrize("doc", [
    [], {}, [[[]]], {"a": [{"b": "]]]]\\\"[[[["}]}, ["\\", "\"[", {"k[": {"}": [1, None]}}],
    [[[[[[[[[[[[]]]]]]]]]]]], {"a": "\u00e9[\n"},
])
def test_depth_check_is_exact_for_valid_json(doc: Any) -> None:
    text = json.dumps(doc).encode()
    for limit in range(0, 14):
        assert limits.nesting_depth_exceeds(text, limit) == (depth(doc) > limit)
        if depth(doc) <= limit:
            assert limits.loads(text, max_bytes=1 << 20, max_depth=limit) == doc


@pytest.mark.parametrize(("data", "needle"), [
    (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
    (b"[" * 100000, "nested too deeply"),
    (b'{"a":' * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
    (b"]]]][[[[", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"1" * 5000, "not JSON"),
    (b'"' + b"x" * 2000 + b'"', "too large"),
])
def test_bad_documents_are_one_clear_line(data: bytes, needle: str) -> None:
    with pytest.raises(limits.JSONLimitError) as info:
        limits.loads(data, max_bytes=1024 if needle == "too large" else 1 << 20, what="the thing")
    text = str(info.value)
    assert needle in text and text.startswith("the thing") and "\n" not in text


def test_agentctl_refuses_a_deeply_nested_reply() -> None:
    c = ctlclient.Client("/nonexistent", 1.0)
    with pytest.raises(ctlclient.CtlError, match="nested too deeply"):
        c._decode(b'{"v":1,"ok":true,"result":' + b"[" * 2000 + b"]" * 2000 + b"}")


# -- control requests ---------------------------------------------------------------------------------


async def test_a_deeply_nested_request_is_an_error_reply_and_the_agent_lives(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        bomb = b'{"v":1,"op":"members","args":' + b"[" * 1000 + b"]" * 1000 + b"}\n"
        deep_id = json.dumps({"v": 1, "op": "members", "id": [[[[1]]]]}).encode() + b"\n"
        replies = await control_exchange(a.socket, bomb + b"[" * 30000 + b"\n" + deep_id)
        assert [r["ok"] for r in replies] == [False, False, True]
        assert "nested too deeply" in replies[0]["error"] and "nested too deeply" in replies[1]["error"]
        assert replies[2]["id"] == [[[[1]]]]
        assert await statuses(a.socket) == {"a": "alive"}
        nursery.cancel_scope.cancel()


class Failing:
    """An extension whose ops fail the ways a bug would."""

    def setup(self, rt: Runtime, server: ControlServer) -> None:
        async def boom(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
            raise RuntimeError("a bug\nwith two lines")

        async def unencodable(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
            return {"bytes": b"\x00"}

        async def recursion(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
            raise RecursionError("maximum recursion depth exceeded")

        server.register("boom", Op(boom, "raises"))
        server.register("unencodable", Op(unencodable, "returns bytes"))
        server.register("recursion", Op(recursion, "raises RecursionError"))

    async def run(self, rt: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()


async def test_any_exception_of_an_op_is_an_error_reply(sockdir: str) -> None:
    opts = AgentOptions(node="a", bind=("127.0.0.1", 0), control_socket=f"{sockdir}/a.sock", profile="local")
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: service.run(opts, handle_signals=False, extensions=[Failing()],
                                                            task_status=task_status))
        lines = b"".join(api.request_line(op) for op in ("boom", "unencodable", "recursion", "members"))
        replies = await control_exchange(opts.control_socket, lines)
        assert [r["ok"] for r in replies] == [False, False, False, True]
        assert replies[0]["error"] == "internal error: a bug with two lines"
        assert replies[1]["error"].startswith("internal error:")
        assert "recursion" in replies[2]["error"]
        nursery.cancel_scope.cancel()


# -- state files -----------------------------------------------------------------------------------------


def test_a_deeply_nested_record_is_moved_aside_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with StateStore(str(tmp_path)) as store:
        (tmp_path / "endpoints.json").write_bytes(b'{"endpoints":' + b"[" * 5000 + b"]" * 5000 + b"}")
        with caplog.at_level(logging.ERROR, logger="agent.store"):
            assert store.load_json("endpoints") is None
        assert "endpoints" in store.corrupt
        warning = store.corrupt["endpoints"].warning()
        assert str(tmp_path / "endpoints.json") in warning and "nested too deeply" in warning
        assert any("state-record-corrupt" in r.getMessage() for r in caplog.records)


def test_records_beyond_the_size_limit_are_neither_written_nor_read(tmp_path: Path) -> None:
    with StateStore(str(tmp_path), max_record=1000) as store:
        with pytest.raises(OSError) as info:
            store.save_json("big", {"x": "y" * 2000})
        assert info.value.errno == errno.EFBIG and not (tmp_path / "big.json").exists()
        (tmp_path / "big.json").write_text(json.dumps({"x": "y" * 2000}))
        assert store.load_json("big") is None and "too large" in store.corrupt["big"].reason


def test_a_deeply_nested_keyring_file_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_bytes(b"[" * 5000)
    with pytest.raises(records.PersistError) as info:
        records.read_keyring_file(str(path))
    assert "nested too deeply" in str(info.value) and str(path) in str(info.value)


async def test_nested_json_in_endpoints_json_does_not_stop_the_start(sockdir: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "endpoints.json").write_bytes(b"[" * 3000 + b"]" * 3000)
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", state_dir=str(state))
        st = await query(a.socket, "status")
        assert any("endpoints.json was unreadable" in w and "nested too deeply" in w for w in st["warnings"])
        nursery.cancel_scope.cancel()


# -- writes that fail (issue 18 item 7) -------------------------------------------------------------------


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """``on[0] = True``: every state record write fails like a full disk (ENOSPC)."""
    on = [False]
    real = StateStore.save_json

    def save_json(self: StateStore, name: str, obj: Any, mode: int = 0o600) -> None:
        if on[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, name, obj, mode)

    monkeypatch.setattr(StateStore, "save_json", save_json)
    return on


async def test_a_create_that_cannot_be_saved_fails_and_changes_nothing(
    sockdir: str, tmp_path: Path, full_disk: list[bool]
) -> None:
    state = str(tmp_path / "state")
    plumber = FakePlumber()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=state)
        b = await start(nursery, sockdir, "b", join=(a.addr,), ip="127.0.0.2")
        for agent in (a, b):
            await wait_until(lambda agent=agent: _ready(agent.socket), f"{agent.name} ready")
        await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        kept = await query(a.socket, "endpoint", {"action": "create", "network": "blue",
                                                   "netns": netns_file(sockdir, "c1"), "name": "kept"})
        # b takes part in the network (an endpoint there), so it holds a's rows.
        await query(b.socket, "endpoint", {"action": "create", "network": "blue",
                                           "netns": netns_file(sockdir, "cb"), "name": "bee"})
        full_disk[0] = True
        message = await error_of(a.socket, "endpoint", {"action": "create", "network": "blue",
                                                        "netns": netns_file(sockdir, "c2"), "name": "lost"})
        assert message == ("endpoint not created: the state could not be saved (No space left on device); "
                           "nothing was changed")
        assert sorted(plumber.made) == [kept["host_ifname"]]  # the new veth was taken back
        # a's own endpoints (b's "bee" shows up here too once its row has arrived)
        mine = [e["name"] for e in await query(a.socket, "endpoint", {"action": "ls"}) if e["node"] == "a"]
        assert mine == ["kept"]
        # A remove that cannot be saved is refused too, and the endpoint stays whole.
        message = await error_of(a.socket, "endpoint", {"action": "rm", "ref": "kept"})
        assert message.startswith("endpoint kept not removed: the state could not be saved")
        assert sorted(plumber.made) == [kept["host_ifname"]]
        st = await query(a.socket, "status")
        assert any("state could not be saved" in w for w in st["warnings"])

        async def peer_sees_only_kept() -> bool:
            rows = await query(b.socket, "endpoint", {"action": "ls"})
            return sorted(e["name"] for e in rows) == ["bee", "kept"]

        await wait_until(peer_sees_only_kept, "the peer to hold only the saved endpoint")
        full_disk[0] = False  # the next good write clears the warning
        await query(a.socket, "endpoint", {"action": "create", "network": "blue",
                                           "netns": netns_file(sockdir, "c3"), "name": "later"})
        st = await query(a.socket, "status")
        assert not any("state could not be saved" in w for w in st["warnings"])
        nursery.cancel_scope.cancel()
    # The restart finds exactly what was reported created.
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=state)
        names = sorted(e["name"] for e in await query(a.socket, "endpoint", {"action": "ls"}))
        assert names == ["kept", "later"] and len(plumber.made) == 2 and not plumber.removed[1:]
        nursery.cancel_scope.cancel()


async def test_a_read_only_or_full_state_dir_refuses_before_anything_changes(
    sockdir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plumber = FakePlumber()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=str(tmp_path / "state"))
        await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        before = a.overlay.tables.clock if a.overlay.tables else 0
        monkeypatch.setattr(StateStore, "writable",
                            lambda self, need=0: f"state dir {self.path} is on a read-only file system")
        message = await error_of(a.socket, "endpoint", {"action": "create", "network": "blue",
                                                        "netns": netns_file(sockdir, "c1")})
        assert message.endswith("is on a read-only file system; nothing was changed")
        assert plumber.made == {} and a.overlay.tables is not None and a.overlay.tables.clock == before
        nursery.cancel_scope.cancel()


# -- corrupt state (issue 18 item 8) ---------------------------------------------------------------------


async def test_a_corrupt_endpoints_record_deletes_no_interface(
    sockdir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    plumber = FakePlumber()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=str(state))
        await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        for name in ("one", "two"):
            await query(a.socket, "endpoint", {"action": "create", "network": "blue",
                                               "netns": netns_file(sockdir, name), "name": name})
        a.scope.cancel()
    live = sorted(plumber.made)
    (state / "endpoints.json").write_bytes(b'{"version": 1, "endpoints": [{"id": "trunc')
    monkeypatch.setattr(extension, "KEPT_CHECK_INTERVAL", 0.1)
    with caplog.at_level(logging.ERROR):
        async with trio.open_nursery() as nursery:
            a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=str(state))
            st = await query(a.socket, "status")
            assert sorted(plumber.made) == live and plumber.removed == []
            warnings = "\n".join(st["warnings"])
            assert f"state file {state / 'endpoints.json'} was unreadable" in warnings
            assert "moved aside to" in warnings and "2 endpoint interface(s)" in warnings
            assert all(name in warnings for name in live)
            a.scope.cancel()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("state-record-corrupt" in m and "endpoints" in m for m in errors)
    assert any("endpoint-interfaces-kept" in m for m in errors)
    assert [p.name for p in state.iterdir() if ".corrupt-" in p.name]
    # Restarted again (a readable record now, listing them as kept): still nothing
    # deleted; the operator deletes one, and its warning goes.
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=str(state))
        assert sorted(plumber.made) == live and plumber.removed == []
        del plumber.made[live[0]]

        async def one_left() -> bool:
            st = await query(a.socket, "status")
            return any("1 endpoint interface(s)" in w and live[1] in w for w in st["warnings"])

        await wait_until(one_left, "the deleted interface's warning to go")
        nursery.cancel_scope.cancel()


async def test_no_record_but_interfaces_of_ours_keeps_them(sockdir: str, tmp_path: Path) -> None:
    plumber = FakePlumber()
    plumber.made["ov-0123456789ab"] = VethSpec("ov-0123456789ab", "/x", "eth0", "02:00:00:00:00:01", (), 1450)
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=str(tmp_path / "state"))
        st = await query(a.socket, "status")
        assert "ov-0123456789ab" in plumber.made and plumber.removed == []
        assert any("ov-0123456789ab" in w and "kept" in w for w in st["warnings"])
        nursery.cancel_scope.cancel()


# -- the bridge's port limit (issue 18 item 11) ------------------------------------------------------


async def test_a_full_network_refuses_the_next_endpoint_and_says_why(sockdir: str, tmp_path: Path) -> None:
    plumber = FakePlumber()
    async with trio.open_nursery() as nursery:
        a = await start(nursery, sockdir, "a", plumber=plumber, state_dir=str(tmp_path / "state"),
                        limits={"endpoints_per_network": 3})
        await query(a.socket, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        await query(a.socket, "network", {"action": "create", "name": "red", "subnets": ["10.8.0.0/24"]})
        for i in range(3):
            await query(a.socket, "endpoint", {"action": "create", "network": "blue",
                                               "netns": netns_file(sockdir, f"b{i}")})
        message = await error_of(a.socket, "endpoint", {"action": "create", "network": "blue",
                                                        "netns": netns_file(sockdir, "b3")})
        assert message == ("network 'blue' already has 3 endpoints on this host, the most it can have "
                           "(limits.endpoints_per_network = 3); put further endpoints on another network or host")
        assert len(plumber.made) == 3
        await query(a.socket, "endpoint", {"action": "create", "network": "red",  # other networks: fine
                                           "netns": netns_file(sockdir, "r0")})
        nursery.cancel_scope.cancel()
    with pytest.raises(ValueError, match="cannot exceed 1022"):
        limits.Limits(endpoints_per_network=1023)


# -- warnings and errors (issue 18, "also seen") ----------------------------------------------------------


async def _ready(path: str) -> bool:
    return bool((await query(path, "status"))["ready"])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_the_no_seed_warning_goes_once_a_later_rejoin_succeeds(sockdir: str) -> None:
    port = _free_port()
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a", join=(("127.0.0.1", port),),
                              gossip={"rejoin_interval": 1.0})
        st = await query(a.socket, "status")
        assert st["join"]["contacted"] == 0
        assert "no join seed answered; retrying in the background" in st["warnings"]
        # The seed comes up after the join's quick retries gave up (0.5 s, then the backoff
        # reaches rejoin_interval): the periodic rejoin, which reports no JoinFinished of
        # its own, is what reaches it.
        await trio.sleep(1.5)
        st = await query(a.socket, "status")
        assert st["join"]["contacted"] == 0 and any("no join seed" in w for w in st["warnings"])
        await start_agent(nursery, sockdir, "b", bind=("127.0.0.1", port))

        async def joined_and_quiet() -> bool:
            st = await query(a.socket, "status")
            return await statuses(a.socket) == {"a": "alive", "b": "alive"} and not any(
                "no join seed" in w for w in st["warnings"])

        await wait_until(joined_and_quiet, "the rejoin to reach b and the warning to go")
        nursery.cancel_scope.cancel()


async def test_keys_install_of_a_bad_key_is_one_line_not_an_internal_error(
    sockdir: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        out, err = io.StringIO(), io.StringIO()
        with caplog.at_level(logging.DEBUG):
            for bad in ("not-base64!", "c2hvcnQ="):
                code = await trio.to_thread.run_sync(
                    lambda bad=bad: _ctl_with_stderr(["--socket", a.socket, "keys", "install", bad], out, err))
                assert code == 1
        lines = err.getvalue().splitlines()
        assert len(lines) == 2, lines
        assert "not valid base64" in lines[0] and "16, 24 or 32 bytes" in lines[1]
        st = await query(a.socket, "status")
        assert st["counters"]["internal_errors"] == 0
        assert not any("internal-error" in r.getMessage() or r.exc_info for r in caplog.records)
        nursery.cancel_scope.cancel()


def _ctl_with_stderr(argv: list[str], out: io.StringIO, err: io.StringIO) -> int:
    import contextlib

    with contextlib.redirect_stderr(err):
        return ctl.main(argv, out)
