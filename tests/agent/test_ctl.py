"""agentctl: argument handling, output formats, and its client against scripted agents."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio

from agent.control import protocol as api
from agent.ctl import main as ctl

MEMBERS: list[dict[str, Any]] = [
    {"name": "h1", "address": "10.0.0.1", "port": 7946, "status": "alive", "incarnation": 3,
     "tags": {"role": "overlay-agent", "rack": "r1"}, "protocol": "1-2", "self": True},
    {"name": "host-two", "address": "fd00::2", "port": 7000, "status": "suspect", "incarnation": 12,
     "tags": {}, "self": False},
    {"name": "h3", "address": "10.0.0.3", "port": 7946, "status": "left", "incarnation": 0,
     "tags": {"role": "serf"}, "self": False},
]


def test_members_table_like_docker_node_ls() -> None:
    text = ctl.format_members(MEMBERS)
    assert text == (
        "NAME       ADDRESS          STATUS    INCARNATION   PROTOCOL   TAGS\n"
        "h1 *       10.0.0.1:7946    alive     3             1-2        rack=r1,role=overlay-agent\n"
        "host-two   [fd00::2]:7000   suspect   12            -\n"
        "h3         10.0.0.3:7946    left      0             -          role=serf\n"
    )


def test_empty_members_table_has_header() -> None:
    assert ctl.format_members([]) == "NAME   ADDRESS   STATUS   INCARNATION   PROTOCOL   TAGS\n"


def test_status_text() -> None:
    text = ctl.format_status({
        "node": "h1", "address": "10.0.0.1", "port": 7946, "version": "0.1.0", "uptime": 3725.2,
        "profile": "lan", "encrypted": True, "incarnation": 2, "leaving": False,
        "members": {"alive": 2, "suspect": 1, "dead": 0, "left": 4, "total": 7},
    })
    assert "Node:        h1\n" in text
    assert "Uptime:      1h2m5s\n" in text
    assert "Members:     2 alive, 1 suspect, 0 dead, 4 left\n" in text
    assert "Encrypted:   yes\n" in text


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["members", "--format", "yaml"], "invalid choice"),
        (["--timeout", "0", "members"], "--timeout"),
        (["--timeout", "x", "members"], "--timeout"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        ctl.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ctl.main(["--help"])
    out = capsys.readouterr().out
    assert "agentctl members --format json" in out and "OVERLAY_AGENT_SOCKET" in out


async def _scripted_agent(path: str, respond: Callable[[bytes], bytes], nursery: trio.Nursery) -> list[bytes]:
    """A fake agent: each connection's first line goes to ``respond``; returns requests seen."""
    seen: list[bytes] = []
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(4)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while b"\n" not in buf:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                buf += chunk
            seen.append(buf)
            await stream.send_all(respond(buf))

    nursery.start_soon(trio.serve_listeners, handle, [listener])
    return seen


async def _ctl(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = await trio.to_thread.run_sync(ctl.main, argv, out)
    return code, out.getvalue()


async def test_members_json_passes_the_agent_view_through(sockdir: str) -> None:
    path = f"{sockdir}/agent.sock"
    async with trio.open_nursery() as nursery:
        seen = await _scripted_agent(path, lambda req: api.encode(api.ok(MEMBERS)), nursery)
        code, out = await _ctl(["--socket", path, "members", "--format", "json"])
        assert code == 0
        assert json.loads(out) == MEMBERS
        assert json.loads(seen[0]) == {"v": 1, "op": "members"}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        (api.encode(api.error("boom")), "agent: boom"),
        (b'{"v": 2, "ok": true, "result": []}\n', "version 2"),
        (b"not json\n", "malformed reply"),
        (b"", "without a reply"),
    ],
)
async def test_agent_errors_are_one_line_exit_1(
    sockdir: str, reply: bytes, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = f"{sockdir}/agent.sock"
    async with trio.open_nursery() as nursery:
        await _scripted_agent(path, lambda req: reply, nursery)
        code, out = await _ctl(["--socket", path, "status"])
        nursery.cancel_scope.cancel()
    assert code == 1 and out == ""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


async def test_silent_agent_times_out(sockdir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{sockdir}/agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(path)
        mute.listen(1)  # accepts (in the backlog) but never answers
        code, _ = await _ctl(["--socket", path, "--timeout", "0.2", "members"])
    assert code == 1
    assert "did not answer within 0.2s" in capsys.readouterr().err


async def test_leave_output(sockdir: str) -> None:
    path = f"{sockdir}/agent.sock"
    async with trio.open_nursery() as nursery:
        seen = await _scripted_agent(path, lambda req: api.encode(api.ok({"left": True, "announced": True})), nursery)
        code, out = await _ctl(["--socket", path, "leave"])
        nursery.cancel_scope.cancel()
    assert code == 0 and out == "Graceful leave complete\n"
    assert json.loads(seen[0])["op"] == "leave"


def test_status_text_shows_readiness_and_warnings() -> None:
    text = ctl.format_status({
        "node": "h1", "address": "10.0.0.1", "port": 7946, "version": "0.1.0", "uptime": 5,
        "ready": False, "waiting_for": ["first-join"], "encrypted": True, "require_encryption": False,
        "join": {"contacted": 0, "failed": ["10.0.0.2:7946"]}, "state_dir": "/var/lib/overlay-agent",
        "metrics": "127.0.0.1:9464", "warnings": ["no join seed answered; retrying in the background"],
        "members": {"alive": 1},
    })
    assert "Ready:       no (waiting for first-join)\n" in text
    assert "Encrypted:   yes (plaintext accepted)\n" in text
    assert "Join:        0 seed(s) answered, failed: 10.0.0.2:7946\n" in text
    assert "Metrics:     http://127.0.0.1:9464/metrics\n" in text
    assert text.endswith("Warnings:\n  - no join seed answered; retrying in the background\n")


def test_keys_text() -> None:
    listed = {"node": "h1", "keys": ["K1", "K2"], "primary": "K1", "require_encryption": True}
    assert ctl.format_keys(listed) == "Keyring of h1: 2 key(s), plaintext refused\n  primary  K1\n           K2\n"
    assert "not enabled" in ctl.format_keys({"node": "h1", "keys": []})
    change = {"action": "install", "node": "h1", "changed": True, "persisted": True,
              "keyring_file": "/var/lib/overlay-agent/keyring.json", "live_members": 3, "cluster_wide": False}
    text = ctl.format_key_change(change)
    assert text.startswith("Installed the key on h1; keyring saved to /var/lib/overlay-agent/keyring.json.\n")
    assert "2 other live member(s) were not asked" in text
    assert "no change" in ctl.format_key_change({**change, "action": "use", "changed": False, "persisted": None})


def test_key_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("c2VjcmV0c2VjcmV0c2VjcmV0\n"))
    assert ctl._read_key("-") == "c2VjcmV0c2VjcmV0c2VjcmV0"
    assert ctl._read_key(" abc ") == "abc"


def test_bash_completion_script(tmp_path: Any) -> None:
    import shutil
    import subprocess

    out = io.StringIO()
    assert ctl.main(["completion", "bash"], out) == 0
    script = out.getvalue()
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    path = tmp_path / "agentctl.bash"
    path.write_text(script)
    probe = (f"source {path}; "
             'COMP_WORDS=(agentctl keys in); COMP_CWORD=2; _agentctl; echo "${COMPREPLY[*]}"; '
             'COMP_WORDS=(agentctl members --format ""); COMP_CWORD=3; _agentctl; echo "${COMPREPLY[*]}"; '
             'COMP_WORDS=(agentctl ""); COMP_CWORD=1; _agentctl; echo "${COMPREPLY[*]}"')
    r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True, timeout=30)
    lines = r.stdout.splitlines()
    assert lines[0] == "install"
    assert lines[1] == "table text json"
    assert set(lines[2].split()) >= {"members", "status", "keys", "leave", "events", "completion"}


async def test_leave_json(sockdir: str) -> None:
    path = f"{sockdir}/agent.sock"
    async with trio.open_nursery() as nursery:
        await _scripted_agent(path, lambda req: api.encode(api.ok({"left": True, "announced": False})), nursery)
        code, out = await _ctl(["--socket", path, "leave", "--format", "json"])
        nursery.cancel_scope.cancel()
    assert code == 0 and json.loads(out) == {"left": True, "announced": False}
