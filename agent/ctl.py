"""``agentctl``: the operator's command line for a running agent (over the control API).

Owns: subcommands, the blocking client for the control socket, and the human
output formats (a ``docker node ls``-like table; ``--format json`` for scripts).
Errors are one line on stderr with exit status 1 (agent missing, down, refusing);
bad usage is exit status 2. Does not: import trio or touch gossip state.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, TextIO

from agent import api
from agent.addresses import format_address

SOCKET_ENV = "OVERLAY_AGENT_SOCKET"
DEFAULT_SOCKET = "/run/overlay-agent/agent.sock"
MAX_REPLY = 64 * 1024 * 1024


class CtlError(RuntimeError):
    """A failure to report as one line, exit status 1."""


# -- client ------------------------------------------------------------------------


class Client:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise CtlError(
                f"no agent control socket at {self.path} (is overlay-agent running? "
                f"choose another with --socket or ${SOCKET_ENV})"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise CtlError(f"the agent is not running (connection refused on {self.path})") from None
        except PermissionError:
            sock.close()
            raise CtlError(f"permission denied on {self.path} (run as root or the socket's owner)") from None
        except OSError as exc:
            sock.close()
            raise CtlError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        return sock

    def _lines(self, sock: socket.socket) -> Iterator[dict[str, Any]]:
        buf = bytearray()
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                line = bytes(buf[:end])
                del buf[: end + 1]
                yield self._decode(line)
                continue
            if len(buf) > MAX_REPLY:
                raise CtlError("reply from the agent is too large")
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise CtlError(f"the agent did not answer within {self.timeout:g}s ({self.path})") from None
            except OSError as exc:
                raise CtlError(f"connection to the agent failed: {exc.strerror or exc}") from None
            if not chunk:
                if buf.strip():
                    yield self._decode(bytes(buf))
                return
            buf += chunk

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(line)
        except ValueError:
            raise CtlError("malformed reply from the agent") from None
        if not isinstance(obj, dict):
            raise CtlError("malformed reply from the agent")
        if obj.get("v") != api.VERSION:
            raise CtlError(f"the agent speaks control API version {obj.get('v')!r}, agentctl {api.VERSION}")
        if not obj.get("ok"):
            raise CtlError(f"agent: {obj.get('error', 'unknown error')}")
        return obj

    def request(self, op: str, args: dict[str, Any] | None = None) -> Any:
        with self._connect() as sock:
            try:
                sock.sendall(api.request_line(op, args))
            except OSError as exc:
                raise CtlError(f"connection to the agent failed: {exc.strerror or exc}") from None
            for reply in self._lines(sock):
                return reply.get("result")
        raise CtlError("the agent closed the connection without a reply")

    def stream(self, op: str) -> Iterator[dict[str, Any]]:
        """A streaming op: the first reply acknowledges, then one event per line."""
        with self._connect() as sock:
            sock.sendall(api.request_line(op))
            lines = self._lines(sock)
            if next(lines, None) is None:
                raise CtlError("the agent closed the connection without a reply")
            sock.settimeout(None)  # events may be far apart
            for reply in lines:
                if "event" in reply:
                    yield reply["event"]


# -- formats -----------------------------------------------------------------------


def _tags_text(tags: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by 3 spaces (docker's tabwriter style)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def format_members(members: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            f"{m['name']} *" if m.get("self") else str(m["name"]),
            format_address((str(m["address"]), int(m["port"]))),
            str(m["status"]),
            str(m["incarnation"]),
            _tags_text(m.get("tags") or {}),
        ]
        for m in members
    ]
    return table(["NAME", "ADDRESS", "STATUS", "INCARNATION", "TAGS"], rows)


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{s}s")
    return "".join(parts)


def format_status(st: dict[str, Any]) -> str:
    counts = st.get("members", {})
    fields = [
        ("Node", str(st.get("node"))),
        ("Address", format_address((str(st.get("address")), int(st.get("port", 0))))),
        ("Version", str(st.get("version"))),
        ("Uptime", _duration(float(st.get("uptime", 0)))),
        ("Profile", str(st.get("profile"))),
        ("Encrypted", "yes" if st.get("encrypted") else "no"),
        ("Members", ", ".join(f"{counts.get(k, 0)} {k}" for k in ("alive", "suspect", "dead", "left"))),
        ("Incarnation", str(st.get("incarnation"))),
        ("Leaving", "yes" if st.get("leaving") else "no"),
    ]
    width = max(len(k) for k, _ in fields) + 2
    return "".join(f"{(k + ':').ljust(width)}{v}\n" for k, v in fields)


def format_event(ev: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(float(ev.get("time", 0))))
    m = ev.get("member") or {}
    addr = format_address((str(m.get("address")), int(m.get("port", 0)))) if m else ""
    return f"{stamp}  {ev.get('type')}  {m.get('name', '')}  {addr}  {m.get('status', '')}\n"


# -- commands ----------------------------------------------------------------------


def _dump(obj: Any, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def cmd_members(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    members = client.request("members")
    if ns.format == "json":
        _dump(members, out)
    else:
        out.write(format_members(members))
    return 0


def cmd_status(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    st = client.request("status")
    if ns.format == "json":
        _dump(st, out)
    else:
        out.write(format_status(st))
    return 0


def cmd_leave(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    result = client.request("leave") or {}
    if result.get("announced", True):
        out.write("Graceful leave complete\n")
    else:
        out.write("Left; the leave may not have reached every peer before the agent stopped\n")
    return 0


def cmd_events(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    for ev in client.stream("events"):
        out.write(json.dumps(ev, sort_keys=True) + "\n" if ns.format == "json" else format_event(ev))
        out.flush()
    return 0


EPILOG = f"""\
examples:
  agentctl members                    table of members; '*' marks this node
  agentctl members --format json      the same as JSON, for scripts
  agentctl status                     node, version, uptime, member counts
  agentctl events --follow            member changes as they happen
  agentctl leave                      leave the cluster gracefully and stop the agent
  agentctl --socket /tmp/a.sock members

The socket defaults to ${SOCKET_ENV}, else {DEFAULT_SOCKET}.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="agentctl", description="Control a running overlay-agent.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", default=os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET, metavar="PATH",
                   help=f"agent control socket (default: ${SOCKET_ENV} or {DEFAULT_SOCKET})")
    p.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                   help="how long to wait for the agent (default: 15)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    m = sub.add_parser("members", help="list cluster members",
                       epilog="columns: NAME ('*' = this node) ADDRESS STATUS INCARNATION TAGS")
    m.add_argument("--format", choices=("table", "json"), default="table")
    m.set_defaults(run=cmd_members)
    s = sub.add_parser("status", help="show this agent's status")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(run=cmd_status)
    lv = sub.add_parser("leave", help="leave the cluster gracefully, then stop the agent")
    lv.set_defaults(run=cmd_leave)
    ev = sub.add_parser("events", help="print member events as they happen (until Ctrl-C)")
    ev.add_argument("--follow", "-f", action="store_true", help="keep following (the default)")
    ev.add_argument("--format", choices=("text", "json"), default="text")
    ev.set_defaults(run=cmd_events)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    ns = build_parser().parse_args(argv)
    out = out if out is not None else sys.stdout
    if ns.timeout <= 0:
        build_parser().error("--timeout must be positive")
    client = Client(ns.socket, ns.timeout)
    try:
        code: int = ns.run(client, ns, out)
        return code
    except CtlError as exc:
        print(f"agentctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `agentctl events | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
