"""Gossip key management: agentctl keys on running agents, persistence, the roll-out window."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from agent import service
from agent.cli import AgentOptions
from agent.control.server import ControlServer
from agent.ctl import main as ctl
from agent.runtime import Runtime
from agent.store import records as persist
from gossip.effects import Effect, KeyringChanged
from gossip.swim import Swim
from tests.agent.conftest import query, start_agent, statuses, wait_until

KEY_A, KEY_B = bytes(range(16)), bytes(range(1, 33))
A, B = base64.b64encode(KEY_A).decode(), base64.b64encode(KEY_B).decode()


async def agentctl(sock: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await trio.to_thread.run_sync(ctl.main, ["--socket", sock, *argv], out)
    return code, out.getvalue()


async def test_rotate_keys_on_a_running_cluster(
    sockdir: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a", encrypt_keys=(KEY_A,), state_dir=str(tmp_path / "a"))
        b = await start_agent(nursery, sockdir, "b", join=(a.addr,), encrypt_keys=(KEY_A,))

        async def pair() -> bool:
            return [await statuses(x.socket) for x in (a, b)] == [{"a": "alive", "b": "alive"}] * 2

        await wait_until(pair, "a and b to form an encrypted cluster")
        code, out = await agentctl(a.socket, "keys", "list")
        assert code == 0 and out.startswith(f"Keyring of a: 1 key(s), plaintext refused\n  primary  {A}\n")
        assert "Cluster: 2/2 members applied it (a, b)." in out and "the same keys" in out

        # install -> use -> remove, run once on a: the serf key query carries each to b.
        for action, key in (("install", B), ("use", B), ("remove", A)):
            code, out = await agentctl(a.socket, "keys", action, key)
            assert code == 0, capsys.readouterr().err
            assert "Cluster: 2/2 members applied it (a, b)." in out, out
        code, out = await agentctl(b.socket, "keys", "list", "--local")
        assert out.startswith(f"Keyring of b: 1 key(s), plaintext refused\n  primary  {B}\n")
        code, out = await agentctl(b.socket, "keys", "install", A, "--local")
        assert "Applied on this node only (--local); 1 other live member(s) were not asked." in out
        code, out = await agentctl(b.socket, "keys", "remove", A, "--local")
        ring = persist.read_keyring_file(str(tmp_path / "a" / "keyring.json"))
        assert ring == [KEY_B]  # a persisted every change

        code, out = await agentctl(b.socket, "keys", "list", "--format", "json")
        listed = json.loads(out)
        assert listed["keys"] == [B] and listed["primary"] == B and listed["require_encryption"] is True

        # Gossip still flows under the new key, without decode errors.
        before = (await query(a.socket, "status"))["counters"]

        async def traffic() -> bool:
            c = (await query(a.socket, "status"))["counters"]
            return bool(c["datagrams_in"] >= before["datagrams_in"] + 5)

        await wait_until(traffic, "gossip under the new key")
        after = (await query(a.socket, "status"))["counters"]
        assert after["decode_errors"] == before["decode_errors"]
        assert await statuses(a.socket) == {"a": "alive", "b": "alive"}

        # Refusals are one line, exit 1, and change nothing.
        for argv, needle in [
            (["keys", "remove", B], "the primary key cannot be removed"),
            (["keys", "use", A], "key is not installed"),
            (["keys", "install", "AAAA"], "must decode to 16, 24 or 32 bytes"),
            (["keys", "install", "not base64!"], "not valid base64"),
        ]:
            capsys.readouterr()
            code, out = await agentctl(a.socket, *argv)
            err = capsys.readouterr().err
            assert code == 1 and out == "" and err.count("\n") == 1 and needle in err, (argv, err)
        assert persist.read_keyring_file(str(tmp_path / "a" / "keyring.json")) == [KEY_B]

        # A restart starts from the persisted keyring, not from encrypt_keys.
        a.kill()
        await a.finished.wait()
        a2 = await start_agent(nursery, sockdir, "a", encrypt_keys=(KEY_A,), state_dir=str(tmp_path / "a"),
                               bind=a.addr)
        st = await query(a2.socket, "status")
        assert st["keyring_source"] == "file"
        assert (await query(a2.socket, "keys"))["keys"] == [B]
        nursery.cancel_scope.cancel()


async def test_enable_encryption_with_a_window(sockdir: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        code, out = await agentctl(a.socket, "keys", "list")
        assert code == 0 and "not enabled" in out
        code, _ = await agentctl(a.socket, "keys", "install", A)
        assert code == 1 and "--enable" in capsys.readouterr().err
        code, out = await agentctl(a.socket, "keys", "install", "--enable", A)
        assert code == 0 and "keyring was not saved" in out  # no state dir here
        st = await query(a.socket, "status")
        assert st["encrypted"] is True and st["require_encryption"] is False
        assert any("plaintext gossip is accepted" in w for w in st["warnings"])
        code, out = await agentctl(a.socket, "status")
        assert "Encrypted:   yes (plaintext accepted)" in out and "Warnings:" in out
        code, out = await agentctl(a.socket, "keys", "require")
        assert code == 0 and "Plaintext gossip is now refused" in out
        assert (await query(a.socket, "status"))["require_encryption"] is True
        nursery.cancel_scope.cancel()


class _Capture:
    """An Extension that only keeps the runtime (and proves the hook works)."""

    def __init__(self) -> None:
        self.rt: Runtime | None = None
        self.started = trio.Event()

    def setup(self, rt: Runtime, server: ControlServer) -> None:
        self.rt = rt

        async def hello(rt: Runtime, req: Any, stream: Any) -> Any:
            return {"hello": rt.config.node}

        from agent.control.server import Op

        server.register("hello", Op(hello, "test op"))
        rt.status_sections.append(lambda: {"extension": "on"})

    async def run(self, rt: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self.started.set()
        await trio.sleep_forever()


async def test_remote_keyring_change_is_persisted(sockdir: str, tmp_path: Path) -> None:
    """``serf keys`` reaches the core, which emits KeyringChanged; the agent saves the ring."""
    ext = _Capture()
    opts = AgentOptions(node="a", bind=("127.0.0.1", 0), control_socket=f"{sockdir}/a.sock",
                        profile="local", encrypt_keys=(KEY_A,), state_dir=str(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: service.run(opts, handle_signals=False, extensions=[ext],
                                                            task_status=task_status))
        assert ext.rt is not None and ext.started.is_set()
        assert await query(opts.control_socket, "hello") == {"hello": "a"}
        assert (await query(opts.control_socket, "status"))["extension"] == "on"

        def remote_install(swim: Swim, now: float) -> tuple[None, list[Effect]]:
            assert swim.keyring is not None
            swim.keyring.install(KEY_B)  # what gossip.serf.queries does for _serf_install-key
            return None, [KeyringChanged()]

        await ext.rt.driver.call(remote_install)

        async def saved() -> bool:
            return persist.read_keyring_file(str(tmp_path / "keyring.json")) == [KEY_A, KEY_B]

        await wait_until(saved, "the keyring file to follow the remote change")
        nursery.cancel_scope.cancel()


async def test_encryption_rolls_out_on_a_running_plaintext_cluster(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        b = await start_agent(nursery, sockdir, "b", join=(a.addr,))
        c = await start_agent(nursery, sockdir, "c", join=(a.addr,))
        everyone = {"a": "alive", "b": "alive", "c": "alive"}

        async def all_alive() -> bool:
            return all([await statuses(x.socket) == everyone for x in (a, b, c)])

        await wait_until(all_alive, "a plaintext cluster of three")
        for argv in (["install", "--enable", A], ["encrypt"], ["require"]):
            code, out = await agentctl(a.socket, "keys", *argv)
            assert code == 0 and "Cluster: 3/3 members applied it" in out, (argv, out)
        for x in (b, c):
            st = await query(x.socket, "keys", {"action": "list", "local": True})
            assert st["keys"] == [A] and st["require_encryption"] and st["encrypt_outgoing"]
        before = (await query(a.socket, "status"))["counters"]

        async def encrypted_traffic() -> bool:
            now = (await query(a.socket, "status"))["counters"]
            return bool(now["datagrams_in"] >= before["datagrams_in"] + 10)

        await wait_until(encrypted_traffic, "gossip under the new key")
        assert (await query(a.socket, "status"))["counters"]["decode_errors"] == before["decode_errors"]
        assert await all_alive()
        nursery.cancel_scope.cancel()
