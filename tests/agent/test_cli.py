"""Flag parsing of overlay-agent: addresses, defaults, validation (exit 2, one line)."""

from __future__ import annotations

import base64

import pytest

from agent import cli
from agent.addresses import UsageError, format_address, parse_address, peer_address, sockaddr_for

KEY16 = base64.b64encode(bytes(range(16))).decode()
KEY32 = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 7946)),
        ("10.0.0.1:8000", ("10.0.0.1", 8000)),
        ("[fd00::1]:8000", ("fd00::1", 8000)),
        ("[fd00::1]", ("fd00::1", 7946)),
        ("fd00::1", ("fd00::1", 7946)),
        ("::", ("::", 7946)),
        ("[FD00:0::1]:1", ("fd00::1", 1)),
        (" 127.0.0.1 ", ("127.0.0.1", 7946)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, 7946) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host.example", "10.0.0.1:", "10.0.0.1:x", "10.0.0.1:65536", "10.0.0.1:0", "[fd00::1",
     "[fd00::1]x", "[10.0.0.1]:80", "10.0.0.256", "1.2.3.4:-1"],
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_address(text, 7946)


def test_port_zero_only_where_allowed() -> None:
    assert parse_address("127.0.0.1:0", 7946, allow_zero_port=True) == ("127.0.0.1", 0)


def test_format_and_normalise() -> None:
    assert format_address(("fd00::1", 7946)) == "[fd00::1]:7946"
    assert format_address(("10.0.0.1", 7946)) == "10.0.0.1:7946"
    assert peer_address(("::ffff:10.0.0.1", 5, 0, 0)) == ("10.0.0.1", 5)
    assert peer_address(("fd00::1", 5, 0, 0)) == ("fd00::1", 5)
    import socket

    assert sockaddr_for(socket.AF_INET6, ("10.0.0.1", 5)) == ("::ffff:10.0.0.1", 5)
    assert sockaddr_for(socket.AF_INET6, ("fd00::1", 5)) == ("fd00::1", 5)
    assert sockaddr_for(socket.AF_INET, ("10.0.0.1", 5)) == ("10.0.0.1", 5)


def test_full_flag_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.SOCKET_ENV, raising=False)
    opts = cli.parse_args([
        "--node", "h1", "--bind", "0.0.0.0:7000", "--advertise", "10.0.0.1",
        "--join", "10.0.0.2", "--join", "[fd00::3]:7001",
        "--encrypt-key", KEY32, "--encrypt-key", KEY16,
        "--state-dir", "/var/lib/x", "--profile", "wan", "--leave-on-terminate",
        "--tag", "rack=r1", "--tag", "zone=a=b", "--log-level", "debug",
    ])
    assert opts.node == "h1"
    assert opts.bind == ("0.0.0.0", 7000)
    assert opts.advertise == ("10.0.0.1", 0)  # 0: the port actually bound
    assert opts.join == (("10.0.0.2", 7946), ("fd00::3", 7001))
    assert opts.encrypt_keys == (bytes(range(32)), bytes(range(16)))
    assert opts.state_dir == "/var/lib/x"
    assert opts.profile == "wan"
    assert opts.leave_on_terminate is True
    assert opts.tags == {"role": "overlay-agent", "rack": "r1", "zone": "a=b"}
    assert opts.log_level == "debug"
    assert opts.control_socket == cli.DEFAULT_CONTROL_SOCKET


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.SOCKET_ENV, "/tmp/x.sock")
    opts = cli.parse_args(["--bind", "127.0.0.1"])
    assert opts.bind == ("127.0.0.1", 7946)
    assert opts.advertise is None
    assert opts.node  # the host name
    assert opts.profile == "lan"
    assert opts.leave_on_terminate is False
    assert opts.control_socket == "/tmp/x.sock"
    assert opts.tags == {"role": "overlay-agent"}


def test_user_tag_may_override_role() -> None:
    assert cli.parse_args(["--bind", "127.0.0.1", "--tag", "role=edge"]).tags == {"role": "edge"}


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--bind", "0.0.0.0"], "--advertise"),
        (["--bind", "::"], "--advertise"),
        (["--bind", "127.0.0.1", "--advertise", "0.0.0.0"], "--advertise"),
        (["--bind", "127.0.0.1", "--join", "127.0.0.1:0"], "--join"),
        (["--bind", "127.0.0.1", "--encrypt-key", "AAAA"], "--encrypt-key #1"),
        (["--bind", "127.0.0.1", "--tag", "=v"], "--tag"),
        (["--bind", "127.0.0.1", "--tag", "k=" + "v" * 600], "--tag"),
        (["--bind", "127.0.0.1", "--node", ""], "--node"),
        (["--bind", "127.0.0.1", "--control-socket", ""], "--control-socket"),
        (["--bind", "host:1"], "--bind"),
        (["--bind"], "--bind"),
        (["--bind", "127.0.0.1", "--unknown"], "unrecognized"),
    ],
)
def test_errors_are_one_line_exit_2(flags: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(flags)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("overlay-agent: error:")
    assert needle in err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--leave-on-terminate" in out
