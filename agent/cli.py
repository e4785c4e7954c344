"""Command-line flags of ``overlay-agent``: parse and validate them into ``AgentOptions``.

Owns: the flag set, address syntax (``IP``, ``IP:PORT``, ``[IPv6]:PORT``), and the
rule that a bad flag is one line on stderr and exit status 2 (no usage dump, no
traceback). Does not: open sockets, read files or start anything (see ``service``).
A config file (issue 7) will produce the same ``AgentOptions``; precedence is
flags > environment > file > defaults.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from agent.addresses import UsageError, is_wildcard, parse_address
from crypto.keyring import decode_key
from gossip.config import Profile
from gossip.effects import Address
from gossip.serfcompat import encode_tags

DEFAULT_PORT = 7946
DEFAULT_CONTROL_SOCKET = "/run/overlay-agent/agent.sock"
SOCKET_ENV = "OVERLAY_AGENT_SOCKET"
DEFAULT_ROLE = "overlay-agent"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class AgentOptions:
    node: str
    bind: Address
    advertise: Address | None = None
    """None: the bound address; a port of 0: the bound port."""
    join: tuple[Address, ...] = ()
    encrypt_keys: tuple[bytes, ...] = ()
    control_socket: str = DEFAULT_CONTROL_SOCKET
    state_dir: str | None = None
    profile: Profile = "lan"
    leave_on_terminate: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    log_level: str = "info"


def _address(flag: str, text: str, default_port: int, *, allow_zero_port: bool = False) -> Address:
    try:
        return parse_address(text, default_port, allow_zero_port=allow_zero_port)
    except UsageError as exc:
        raise UsageError(f"{flag} {exc}") from None


def _parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--tag {text!r}: expected KEY=VALUE")
    return key.strip(), value


def _check_node_name(name: str) -> str:
    if not name or len(name) > 128 or any(ch.isspace() or not ch.isprintable() for ch in name):
        raise UsageError(f"--node {name!r}: expected 1-128 printable characters without spaces")
    return name


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


EPILOG = """\
examples:
  overlay-agent --node h1 --bind 10.0.0.1
  overlay-agent --node h2 --bind 10.0.0.2 --join 10.0.0.1 --tag rack=r1
  overlay-agent --node h3 --bind [fd00::3]:7946 --join [fd00::1]:7946 \\
      --encrypt-key "$(cat /etc/overlay-agent/gossip.key)" --leave-on-terminate
  overlay-agent --node h4 --bind 0.0.0.0 --advertise 10.0.0.4 --profile wan
"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="overlay-agent",
        description="Overlay network agent: SWIM membership (memberlist/serf wire compatible).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--node", default=None, help="node name (default: host name)")
    p.add_argument("--bind", required=True, metavar="IP[:PORT]",
                   help=f"address for gossip, UDP and TCP (default port {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--advertise", metavar="IP[:PORT]",
                   help="address peers use to reach us (required when --bind is 0.0.0.0 or ::)")
    p.add_argument("--join", action="append", default=[], metavar="IP[:PORT]",
                   help="seed to join at start (repeatable); seeds are retried while unreachable")
    p.add_argument("--encrypt-key", action="append", default=[], metavar="BASE64",
                   help="gossip key, 16/24/32 bytes in base64 (repeatable; the first encrypts)")
    p.add_argument("--control-socket", metavar="PATH",
                   default=os.environ.get(SOCKET_ENV) or DEFAULT_CONTROL_SOCKET,
                   help=f"control API socket (default: ${SOCKET_ENV} or {DEFAULT_CONTROL_SOCKET})")
    p.add_argument("--state-dir", metavar="DIR", help="directory for persistent state")
    p.add_argument("--profile", choices=("lan", "wan", "local"), default="lan",
                   help="gossip timing profile (default: lan)")
    p.add_argument("--leave-on-terminate", action="store_true",
                   help="announce a graceful leave on SIGTERM/SIGINT (default: exit silently)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help=f"node tag advertised to peers (repeatable; role={DEFAULT_ROLE} is set by default)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="default: info")
    return p


def _options(ns: argparse.Namespace) -> AgentOptions:
    node = _check_node_name(ns.node if ns.node is not None else socket.gethostname())
    bind = _address("--bind", ns.bind, DEFAULT_PORT, allow_zero_port=True)
    advertise = None
    if ns.advertise is not None:
        # Without a port, peers use the port we bind (known only after binding port 0).
        advertise = _address("--advertise", ns.advertise, 0, allow_zero_port=True)
        if is_wildcard(advertise[0]):
            raise UsageError(f"--advertise {ns.advertise!r}: must be a specific address")
    elif is_wildcard(bind[0]):
        raise UsageError(f"--bind {ns.bind!r} is a wildcard address: give --advertise IP too")
    join = tuple(_address("--join", s, DEFAULT_PORT) for s in ns.join)
    keys: list[bytes] = []
    for i, text in enumerate(ns.encrypt_key):
        try:
            keys.append(decode_key(text))
        except ValueError as exc:
            raise UsageError(f"--encrypt-key #{i + 1}: {exc}") from None
    tags = {"role": DEFAULT_ROLE}
    tags.update(_parse_tag(t) for t in ns.tag)
    try:
        encode_tags(tags)  # checks the 512-byte node meta limit
    except ValueError as exc:
        raise UsageError(f"--tag: {exc}") from None
    if not ns.control_socket:
        raise UsageError("--control-socket must not be empty")
    return AgentOptions(
        node=node,
        bind=bind,
        advertise=advertise,
        join=join,
        encrypt_keys=tuple(keys),
        control_socket=ns.control_socket,
        state_dir=ns.state_dir,
        profile=ns.profile,
        leave_on_terminate=ns.leave_on_terminate,
        tags=tags,
        log_level=ns.log_level,
    )


def parse_args(argv: Sequence[str] | None = None) -> AgentOptions:
    """Flags -> options; on any error print one line and raise SystemExit(2)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return _options(ns)
    except UsageError as exc:
        parser.error(str(exc))
