"""Command line of ``overlay-agent``: ``[run] FLAGS`` and ``check-config [FLAGS]``.

Owns: the flag set (one flag per config key, see ``agent.configload.KEYS``), the
sub-commands, and the rule that a bad flag or configuration is one line on
stderr and exit status 2 (no usage dump, no traceback). Does not: read the
config file or validate values itself (``agent.config`` does), open sockets or
start anything (``agent.service``). Not ``agentctl``'s command line: that is
``agent.ctl``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from agent import config as cfg
from agent import configload
from agent.config import (
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_PORT,
    DEFAULT_ROLE,
    LOG_FORMATS,
    LOG_LEVELS,
    PROFILES,
    SOCKET_ENV,
    AgentConfig,
    ConfigError,
)

__all__ = [
    "DEFAULT_CONTROL_SOCKET", "DEFAULT_PORT", "DEFAULT_ROLE", "SOCKET_ENV",
    "AgentOptions", "Command", "build_parser", "parse_args", "parse_command",
]

AgentOptions = AgentConfig
"""The name issue 2's code and tests use for the agent's settings."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"overlay-agent: error: {message} (see --help)\n")


EPILOG = """\
configuration (precedence: flags > environment > file > defaults):
  file         --config FILE, else $OVERLAY_AGENT_CONFIG, else /etc/overlay-agent/agent.toml
               if it exists. Each flag has a key: --state-dir -> state_dir,
               --encrypt-key -> encrypt_keys, --tag K=V -> [tags], --gossip K=V -> [gossip],
               --limit K=V -> [limits].
  environment  OVERLAY_AGENT_<KEY>, e.g. OVERLAY_AGENT_BIND=10.0.0.1,
               OVERLAY_AGENT_JOIN=10.0.0.2,10.0.0.3, OVERLAY_AGENT_TAGS=rack=r1,zone=a,
               OVERLAY_AGENT_GOSSIP_PROBE_INTERVAL=2

examples:
  overlay-agent --node h1 --bind 10.0.0.1
  overlay-agent --node h2 --bind 10.0.0.2 --join 10.0.0.1 --tag rack=r1
  overlay-agent --node h3 --bind [fd00::3]:7946 --join [fd00::1]:7946 \\
      --encrypt-key "$(cat /etc/overlay-agent/gossip.key)" --leave-on-terminate
  overlay-agent --node h4 --bind 0.0.0.0 --advertise 10.0.0.4 --profile wan
  overlay-agent --config /etc/overlay-agent/agent.toml
  overlay-agent check-config --config /etc/overlay-agent/agent.toml --show
"""


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """Every flag defaults to None, so that only given flags override lower layers."""
    add = p.add_argument
    add("--config", metavar="FILE", help=f"TOML config file (default: ${cfg.CONFIG_ENV} or "
        f"{cfg.DEFAULT_CONFIG_FILE} if it exists)")
    add("--node", help="node name (default: host name)")
    add("--bind", metavar="IP[:PORT]",
        help=f"address for gossip, UDP and TCP (default port {DEFAULT_PORT}; 0 = any free port)")
    add("--advertise", metavar="IP[:PORT]",
        help="address peers use to reach us (required when --bind is 0.0.0.0 or ::)")
    add("--join", action="append", metavar="IP[:PORT]",
        help="seed to join at start (repeatable); seeds are retried while unreachable")
    add("--encrypt-key", dest="encrypt_keys", action="append", metavar="BASE64",
        help="gossip key, 16/24/32 bytes in base64 (repeatable; the first encrypts)")
    add("--keyring-file", metavar="FILE",
        help="where the gossip keyring persists (default: STATE_DIR/keyring.json)")
    add("--require-encryption", action=argparse.BooleanOptionalAction, default=None,
        help="with keys, refuse plaintext gossip (default: yes; no = roll-out window)")
    add("--control-socket", metavar="PATH",
        help=f"control API socket (default: ${SOCKET_ENV} or {DEFAULT_CONTROL_SOCKET})")
    add("--control-group", metavar="GROUP",
        help="group allowed to use the control socket (mode 0660; default: root only, 0600)")
    add("--state-dir", metavar="DIR", help="directory for persistent state (default: $STATE_DIRECTORY)")
    add("--profile", choices=PROFILES, help="gossip timing profile (default: lan)")
    add("--gossip", action="append", metavar="NAME=VALUE",
        help="override a gossip timing, e.g. probe_interval=2 (repeatable)")
    add("--limit", dest="limits", action="append", metavar="NAME=VALUE",
        help="override one of the agent's limits, e.g. stream_slots=256 (repeatable; docs/operations.md)")
    add("--leave-on-terminate", action=argparse.BooleanOptionalAction, default=None,
        help="announce a graceful leave on SIGTERM/SIGINT (default: exit silently)")
    add("--tag", dest="tags", action="append", metavar="KEY=VALUE",
        help=f"node tag advertised to peers (repeatable; role={DEFAULT_ROLE} is set by default)")
    add("--vxlan-port", metavar="PORT", help=f"VXLAN UDP port (default: {cfg.DEFAULT_VXLAN_PORT})")
    add("--underlay-interface", metavar="IFNAME", help="underlay interface (default: by route)")
    add("--underlay-mtu", metavar="MTU", help="underlay MTU (default: the interface's)")
    add("--ipsec-rotation-interval", metavar="SECONDS",
        help="IPsec key rotation of encrypted networks (default: 43200 = 12 h)")
    add("--dataplane", action=argparse.BooleanOptionalAction, default=None,
        help="program VXLAN devices, bridges, FDB and neighbours and host endpoints (default: yes)")
    add("--dns", action=argparse.BooleanOptionalAction, default=None,
        help="answer container names on each network's gateway address, UDP/TCP 53 (default: yes)")
    add("--metrics-address", metavar="IP[:PORT]",
        help=f"serve Prometheus metrics here (default: off; default port {cfg.DEFAULT_METRICS_PORT})")
    add("--docker-plugin-socket", metavar="PATH",
        help="serve the Docker network + IPAM plugin here, e.g. /run/docker/plugins/overlay-agent.sock "
             "(the file name is the driver name; default: off)")
    add("--docker-api-socket", metavar="PATH",
        help="dockerd's API socket, for the names of containers on the plugin's networks "
             "(default: /run/docker.sock)")
    add("--log-level", choices=LOG_LEVELS, help="default: info")
    add("--log-format", choices=LOG_FORMATS, help="kv (key=value) or json (default: kv)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="overlay-agent",
        description="Overlay network agent: SWIM membership (memberlist/serf wire compatible).\n"
                    "Commands: run (the default) or check-config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    _add_config_flags(p)
    return p


def build_check_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="overlay-agent check-config",
        description="Validate the configuration (file, environment and flags) without starting. "
                    "Exit status 0 when valid, 2 with a one-line message otherwise.",
        epilog="example:\n  overlay-agent check-config --config /etc/overlay-agent/agent.toml --show\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--show", action="store_true", help="print the effective settings and their origins")
    _add_config_flags(p)
    return p


_FLAG_KEYS = [k for k in configload.KEYS]


def _flag_values(ns: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(ns, name) for name in _FLAG_KEYS}


@dataclass(frozen=True)
class Command:
    name: str
    """run, check-config or version"""
    loaded: configload.Loaded | None
    show: bool = False


def _fail(message: str) -> NoReturn:
    print(f"overlay-agent: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_command(argv: Sequence[str] | None = None) -> Command:
    """argv -> the command and its validated configuration; exit 2 with one line on errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    name = "run"
    if args and args[0] in ("run", "check-config"):
        name = args.pop(0)
    parser = build_check_parser() if name == "check-config" else build_parser()
    ns = parser.parse_args(args)
    if getattr(ns, "version", False):
        return Command("version", None)
    try:
        loaded = configload.load(_flag_values(ns), config_file=ns.config)
    except ConfigError as exc:
        _fail(" ".join(str(exc).split()))
    return Command(name, loaded, show=bool(getattr(ns, "show", False)))


def parse_args(argv: Sequence[str] | None = None) -> AgentConfig:
    """Flags (plus environment and file) -> config; on any error one line and SystemExit(2)."""
    command = parse_command(argv)
    if command.loaded is None:
        raise SystemExit(0)
    return command.loaded.config


def describe(loaded: configload.Loaded) -> str:
    """``check-config --show``: every effective setting, secrets redacted, with its origin."""
    c = loaded.config
    from agent.addresses import format_address

    def addr(a: Any) -> str:
        return format_address(a) if a else "-"

    rows: list[tuple[str, str, str]] = [
        ("node", c.node, "node"),
        ("bind", addr(c.bind), "bind"),
        ("advertise", addr(c.advertise) if c.advertise else "(bound address)", "advertise"),
        ("join", ", ".join(addr(j) for j in c.join) or "-", "join"),
        ("profile", c.profile, "profile"),
        ("encrypt_keys", f"{len(c.encrypt_keys)} key(s)" if c.encrypt_keys else "-", "encrypt_keys"),
        ("keyring_file", c.keyring_path or "(not persisted)", "keyring_file"),
        ("require_encryption", str(c.require_encryption).lower(), "require_encryption"),
        ("vxlan_port", str(c.vxlan_port), "vxlan_port"),
        ("underlay_interface", c.underlay_interface or "(by route)", "underlay_interface"),
        ("underlay_mtu", str(c.underlay_mtu) if c.underlay_mtu else "(interface MTU)", "underlay_mtu"),
        ("dataplane", str(c.dataplane).lower(), "dataplane"),
        ("dns", str(c.dns).lower(), "dns"),
        ("state_dir", c.state_dir or "(none: nothing persists)", "state_dir"),
        ("control_socket", c.control_socket, "control_socket"),
        ("control_group", c.control_group or "(none: mode 0600)", "control_group"),
        ("metrics_address", addr(c.metrics_address) if c.metrics_address else "(off)", "metrics_address"),
        ("docker_plugin_socket", c.docker_plugin_socket or "(off)", "docker_plugin_socket"),
        ("docker_api_socket", c.docker_api_socket, "docker_api_socket"),
        ("log_level", c.log_level, "log_level"),
        ("log_format", c.log_format, "log_format"),
        ("leave_on_terminate", str(c.leave_on_terminate).lower(), "leave_on_terminate"),
    ]
    rows += [(f"tags.{k}", v, f"tags.{k}") for k, v in sorted(c.tags.items())]
    rows += [(f"gossip.{k}", str(v), f"gossip.{k}") for k, v in sorted(c.gossip.items())]
    rows += [(f"limits.{k}", str(v), f"limits.{k}") for k, v in sorted(c.limits.items())]
    width = max(len(r[0]) for r in rows)
    lines = [f"# config file: {c.config_file or '(none)'}"]
    for key, value, origin_key in rows:
        origin = loaded.origins.get(origin_key, "default")
        lines.append(f"{key.ljust(width)} = {value}    # {origin}")
    return "\n".join(lines) + "\n"
