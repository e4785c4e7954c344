"""sd_notify: the protocol pieces, the watchdog task, and the real agent seen from systemd's side."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing

from agent import sdnotify, service
from agent.runtime import Readiness, Runtime
from tests.agent.conftest import query, wait_until

PYTHON = sys.executable


def test_socket_address_forms() -> None:
    assert sdnotify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.socket_address("@abc") == b"\0abc"
    assert sdnotify.socket_address("vsock:2:1234") is None


def test_watchdog_interval() -> None:
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    me = str(os.getpid())
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": me}) == 1.0
    # Inherited from a parent that systemd watches: not for us.
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None


def test_notifier_sends_and_unsets_environment(tmp_path: Any) -> None:
    name = f"oa-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(b"\0" + name.encode())
        env = {"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "1000000", "OTHER": "x"}
        notifier, interval = sdnotify.Notifier.from_environment(env)
        assert notifier is not None and interval == 0.5
        assert env == {"OTHER": "x"}  # children do not inherit systemd's variables
        assert notifier.send("READY=1", "STATUS=ok")
        assert systemd.recv(4096) == b"READY=1\nSTATUS=ok"
        assert notifier.counts == {"READY": 1}
        notifier.close()
    # A filesystem socket, and one that has gone away (no exception, just False).
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        n = sdnotify.Notifier(path)
        assert n.send("WATCHDOG=1") and systemd.recv(100) == b"WATCHDOG=1"
    os.unlink(path)
    assert n.send("WATCHDOG=1") is False
    n.close()
    assert sdnotify.Notifier.from_environment({}) == (None, None)


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, *fields: str) -> bool:
        self.sent.append("\n".join(fields))
        return True


@pytest.mark.parametrize("wedged", [False, True])
async def test_watchdog_pings_only_while_the_driver_answers(
    wedged: bool, autojump_clock: trio.testing.MockClock
) -> None:
    async def call(fn: Any) -> Any:
        if wedged:
            await trio.sleep_forever()
        return None

    recorder = _Recorder()
    rt = cast(Runtime, SimpleNamespace(driver=SimpleNamespace(call=call), notifier=recorder))
    with trio.move_on_after(10):
        await service._watchdog(rt, 0.5)
    pings = recorder.sent.count("WATCHDOG=1")
    assert pings == 0 if wedged else pings >= 15


async def test_readiness_conditions() -> None:
    r = Readiness(["a", "b"])
    assert not r.ready and r.pending == ["a", "b"]
    r.require("c")
    r.mark("a")
    r.mark("b")
    assert not r.ready and r.pending == ["c"]
    r.mark("c")
    assert r.ready
    with pytest.raises(RuntimeError):
        r.require("late")
    with trio.fail_after(1):
        await r.wait()


# -- the real agent, with a fake systemd ----------------------------------------------------


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


async def _silent_seed(nursery: trio.Nursery) -> int:
    """A TCP 'seed' that accepts and never answers: the agent's first join takes tcp_timeout."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, hold, listeners)
    return int(listeners[0].socket.getsockname()[1])


@pytest.mark.slow
async def test_ready_watchdog_stopping_from_systemds_side(sockdir: str) -> None:
    name = f"oa-test-notify-{secrets.token_hex(4)}"
    systemd = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await systemd.bind(b"\0" + name.encode())
    log: list[tuple[str, str]] = []  # ("notify", message) and ("status", ready) in order
    sock = f"{sockdir}/agent.sock"
    logfile = f"{sockdir}/agent.log"
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            while True:
                data = await systemd.recv(4096)
                log.append(("notify", data.decode()))

        nursery.start_soon(receive)
        seed_port = await _silent_seed(nursery)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAY_AGENT_")}
        env.update(NOTIFY_SOCKET=f"@{name}", WATCHDOG_USEC="400000")
        args = [PYTHON, "-m", "agent", "--node", "n1", "--bind", "127.0.0.1:0", "--control-socket", sock,
                "--profile", "local", "--gossip", "tcp_timeout=4", "--join", f"127.0.0.1:{seed_port}"]
        out = await trio.open_file(logfile, "wb")
        async with out:
            proc = await trio.lowlevel.open_process(args, stdin=subprocess.DEVNULL, stderr=out.wrapped, env=env)
        try:
            def notified(prefix: str) -> list[str]:
                return [m for kind, m in log if kind == "notify" and m.startswith(prefix)]

            async def answers() -> bool:
                assert proc.poll() is None, _read(logfile)
                try:
                    st = await query(sock, "status")
                except OSError:
                    return False
                log.append(("status", "ready" if st["ready"] else "not-ready"))
                return True

            await wait_until(answers, "the agent to answer status")
            # The first join is still pending (the seed is silent): not READY yet.
            assert not notified("READY=1"), log
            assert log[-1] == ("status", "not-ready")
            st = await query(sock, "status")
            # (the overlay's first reconcile waits for the join attempt too)
            assert st["waiting_for"] == ["first-join", "dataplane-reconciled"] and st["systemd"] is True

            async def ready() -> bool:
                return bool(notified("READY=1"))

            await wait_until(ready, "READY=1")
            first_status = log.index(("status", "not-ready"))
            first_ready = next(i for i, (k, m) in enumerate(log) if k == "notify" and m.startswith("READY=1"))
            assert first_status < first_ready, log
            assert (await query(sock, "status"))["ready"] is True
            assert "MAINPID=" in notified("READY=1")[0]

            async def pinged() -> bool:
                after = log[first_ready:]
                return sum(1 for k, m in after if k == "notify" and m == "WATCHDOG=1") >= 2

            await wait_until(pinged, "two WATCHDOG=1 after READY=1")
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                code = await proc.wait()
            assert code == 0, _read(logfile)

            async def stopping() -> bool:
                return bool(notified("STOPPING=1"))

            await wait_until(stopping, "STOPPING=1")
            assert len(notified("READY=1")) == 1
            text = _read(logfile)
            assert "event=leave" not in text  # a plain SIGTERM does not leave
            assert "Traceback" not in text
        finally:
            if proc.poll() is None:
                proc.kill()
                await proc.wait()
            nursery.cancel_scope.cancel()
    systemd.close()
