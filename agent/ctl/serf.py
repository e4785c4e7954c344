"""``agentctl event``, ``events``, ``query``, ``force-leave`` and ``rtt``: serf's message layer.

Owns: their argument parsers (hooked into ``agent.ctl.main.build_parser``), the
requests they send (``agent.membership.serfops`` and the ``events`` stream of
``agent.control.ops``) and their output, worded like serf's CLI where serf has a
line for it (``Event 'deploy' dispatched! Coalescing enabled: true``, the query's
``Total Acks``/``Total Responses``). ``events`` streams member events and user
events as they happen; ``events --recent`` lists the user events the agent holds
(LTIME NAME SIZE COALESCE).
Errors: one line on stderr, exit status 1 (``agent.ctl.client.CtlError``).
Does not: talk to the socket itself (``agent.ctl.client``), import trio or the core.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO

from agent.ctl.output import dump, table


class _Client(Protocol):
    def request(self, op: str, args: dict[str, Any] | None = None) -> Any: ...

    def stream(self, op: str) -> Iterator[dict[str, Any]]: ...


EVENT_EPILOG = """\
examples:
  agentctl event deploy                      a user event with no payload (serf agents see it too)
  agentctl event deploy v42 --coalesce=false
  agentctl events --recent                   the user events this agent holds
Name + payload: at most 512 bytes (serf's limit). Names starting with '_' are serf's.
"""

QUERY_EPILOG = """\
examples:
  agentctl query uptime                          every member; serf agents run their handlers
  agentctl query load --node web1 --node web2    only these nodes (serf's -node)
  agentctl query load --tag role=web.*           nodes whose tag matches the regex (serf's -tag)
  agentctl query _serf_ping --no-ack             (serf answers its internal ping with an ack only)
"""


def _truthy(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _payload_arg(text: str | None) -> str:
    """Base64 of the payload; ``-`` reads it from stdin (bytes as they are)."""
    if text is None:
        return ""
    data = sys.stdin.buffer.read() if text == "-" else text.encode()
    return base64.b64encode(data).decode("ascii")


def cmd_event(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    args = {"name": ns.name, "payload": _payload_arg(ns.payload), "coalesce": ns.coalesce}
    result = client.request("event", args) or {}
    if ns.format == "json":
        dump(result, out)
    else:
        out.write(f"Event '{ns.name}' dispatched! Coalescing enabled: {str(ns.coalesce).lower()}\n")
    return 0


def format_user_event(ev: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(float(ev.get("time", 0))))
    return (f"{stamp}  user  {ev.get('name', '')}  ltime={ev.get('ltime', '')}  "
            f"size={ev.get('payload_size', '')}  coalesce={str(ev.get('coalesce', '')).lower()}\n")


def _events(format_member_event: Callable[[dict[str, Any]], str]) -> Callable[[_Client, argparse.Namespace, TextIO], int]:
    def cmd_events(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
        if ns.recent:
            recent = client.request("user-events") or []
            if ns.format == "json":
                dump(recent, out)
            else:
                rows = [[str(e["ltime"]), str(e["name"]), str(e["payload_size"]), str(e["coalesce"]).lower()]
                        for e in recent]
                out.write(table(["LTIME", "NAME", "SIZE", "COALESCE"], rows))
            return 0
        for ev in client.stream("events"):
            if ns.format == "json":
                out.write(json.dumps(ev, sort_keys=True) + "\n")
            elif ev.get("type") == "user":
                out.write(format_user_event(ev))
            else:
                out.write(format_member_event(ev))
            out.flush()
        return 0

    return cmd_events


def cmd_force_leave(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    result = client.request("force-leave", {"name": ns.node}) or {}
    if ns.format == "json":
        dump(result, out)
    else:
        out.write(f"{result.get('name', ns.node)}: {result.get('status', '')}\n")
    return 0


def _tag(text: str) -> tuple[str, str]:
    tag, sep, expr = text.partition("=")
    if not sep or not tag:
        raise argparse.ArgumentTypeError(f"expected TAG=REGEX, got {text!r}")
    return tag, expr


def cmd_query(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    args: dict[str, Any] = {"name": ns.name, "payload": _payload_arg(ns.payload), "ack": not ns.no_ack,
                            "nodes": ns.node or [], "tags": dict(ns.tag or [])}
    if ns.timeout_s is not None:
        args["timeout"] = ns.timeout_s
    if ns.relay_factor:
        args["relay_factor"] = ns.relay_factor
    result = client.request("query", args) or {}
    if ns.format == "json":
        dump(result, out)
        return 0
    out.write(f"Query '{ns.name}' dispatched\n")
    for node in result.get("acks", []):
        out.write(f"Ack from '{node}'\n")
    responses = result.get("responses", {})
    for node in sorted(responses):
        body = base64.b64decode(responses[node]).decode("utf-8", "replace")
        out.write(f"Response from '{node}': {body}\n")
    if not ns.no_ack:
        out.write(f"Total Acks: {len(result.get('acks', []))}\n")
    out.write(f"Total Responses: {len(responses)}\n")
    return 0


def cmd_rtt(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    result = client.request("rtt", {"nodes": ns.nodes}) or {}
    if ns.format == "json":
        dump(result, out)
    else:
        a, b = result["nodes"]
        out.write(f"Estimated {a} <-> {b} rtt: {float(result['rtt_ms']):.3f} ms\n")
    return 0


def add_commands(
    sub: Any, parser_class: type[argparse.ArgumentParser], fmt: Any,
    format_member_event: Callable[[dict[str, Any]], str],
) -> None:
    """Register the sub-commands on ``agentctl``'s sub-parser object."""
    raw = argparse.RawDescriptionHelpFormatter
    e = sub.add_parser("event", help="send a serf user event to the cluster", epilog=EVENT_EPILOG,
                       formatter_class=raw)
    e.add_argument("name", metavar="NAME")
    e.add_argument("payload", metavar="PAYLOAD", nargs="?", help="text, or '-' to read it from stdin")
    e.add_argument("--coalesce", type=_truthy, default=True, metavar="BOOL",
                   help="handlers may coalesce events of this name (default: true)")
    fmt(e, ("text", "json"))
    e.set_defaults(run=cmd_event)

    ev = sub.add_parser("events", help="print member and user events as they happen (until Ctrl-C)",
                        epilog="example: agentctl events --follow --format json; agentctl events --recent")
    ev.add_argument("--follow", "-f", action="store_true", help="keep following (the default)")
    ev.add_argument("--recent", action="store_true", help="list the recent user events and exit")
    fmt(ev, ("text", "json"))
    ev.set_defaults(run=_events(format_member_event))

    q = sub.add_parser("query", help="send a serf query and print the acks and responses",
                       epilog=QUERY_EPILOG, formatter_class=raw)
    q.add_argument("name", metavar="NAME")
    q.add_argument("payload", metavar="PAYLOAD", nargs="?", help="text, or '-' to read it from stdin")
    q.add_argument("--node", action="append", metavar="NAME", help="only this node (repeatable)")
    q.add_argument("--tag", action="append", type=_tag, metavar="TAG=REGEX",
                   help="only nodes whose tag matches (repeatable)")
    q.add_argument("--no-ack", action="store_true", help="do not ask for acks")
    q.add_argument("--relay-factor", type=int, default=0, metavar="N",
                   help="members also send their answers through N random others (serf's -relay-factor)")
    q.add_argument("--query-timeout", dest="timeout_s", type=float, metavar="SECONDS",
                   help="how long to collect answers (default: serf's, from the cluster size)")
    fmt(q, ("text", "json"))
    q.set_defaults(run=cmd_query)

    r = sub.add_parser("rtt", help="estimated round trip between two nodes (serf's coordinates)",
                       epilog="example: agentctl rtt serf1 (from this node); agentctl rtt a b")
    r.add_argument("nodes", nargs="+", metavar="NODE", help="one node (to this one) or two")
    fmt(r, ("text", "json"))
    r.set_defaults(run=cmd_rtt)

    fl = sub.add_parser("force-leave", help="mark a failed member left, as 'serf force-leave' does",
                        epilog="example: agentctl force-leave host3")
    fl.add_argument("node", metavar="NODE")
    fmt(fl, ("text", "json"))
    fl.set_defaults(run=cmd_force_leave)
