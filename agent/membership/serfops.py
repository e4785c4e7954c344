"""Control ops for serf's message layer: ``event``, ``user-events``, ``force-leave``, ``query``,
and ``rtt`` (serf's network coordinates).

Owns: checking each request's arguments (a clear one-line error, nothing changed on
bad input), making the serf message through the core's serf layer
(``gossip.serf.layer``: its clocks and size limits, serf's error wording) and
handing it to ``Swim.serf_message``, which applies and relays it as if heard; the
result shapes ``agentctl event``/``events --recent``/``force-leave``/``query`` print.
Does not: decide what the messages mean (the serf layer does), keep the recent
events (the driver does, ``Driver.user_events``) or print anything (``agent.ctl.serf``).
Reference: serf ``command/event.go``, ``command/force_leave.go``, ``command/query.go``
(flags and defaults), ``serf/serf.go`` (UserEvent, forceLeave, Query).
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import trio

from agent.control import protocol as api
from agent.control.server import Op
from agent.log import kv
from agent.membership.queries import QueryBook
from agent.runtime import Runtime
from gossip.effects import Effect
from gossip.members import Status
from gossip.serf import payloads as serfcompat
from gossip.serf.keyops import query_timeout
from gossip.swim import Swim

log = logging.getLogger("agent.membership.serfops")

MAX_QUERY_TIMEOUT = 300.0
"""Ours: a query waits at most this long (serf takes any duration)."""


def _payload(args: dict[str, Any]) -> bytes:
    raw = args.get("payload", "")
    if not isinstance(raw, str):
        raise api.ApiError('"payload" must be a base64 string')
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise api.ApiError('"payload" is not valid base64') from None


def _name(args: dict[str, Any], what: str) -> str:
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise api.ApiError(f"{what} name must be a non-empty string")
    return name


async def event(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    """``{"name": NAME, "payload": BASE64, "coalesce": bool}``: a serf user event."""
    name = _name(req.args, "event")
    payload = _payload(req.args)
    coalesce = req.args.get("coalesce", True)
    if not isinstance(coalesce, bool):
        raise api.ApiError('"coalesce" must be true or false')
    if name.startswith("_"):  # serf's agent refuses these too
        raise api.ApiError("User events cannot start with '_'")

    def run(swim: Swim, now: float) -> tuple[int, list[Effect]]:
        try:
            msg = swim.serf.user_event(name, payload, coalesce)
        except ValueError as exc:
            raise api.ApiError(f"Error sending event: {exc}") from None
        ltime = serfcompat.decode_serf_message(msg)[1]["LTime"]
        return ltime, swim.serf_message(now, msg)

    ltime = await rt.driver.call(run)
    log.info(kv("user-event-sent", name=name, size=len(payload), ltime=ltime, coalesce=coalesce))
    return {"name": name, "ltime": ltime, "payload_size": len(payload), "coalesce": coalesce}


async def user_events(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    """The recent user events this node saw (its own included), oldest first."""
    return list(rt.driver.user_events)


async def force_leave(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    """``{"name": NODE}``: serf's force-leave, a leave intent about a (failed) member."""
    node = _name(req.args, "node")

    def run(swim: Swim, now: float) -> tuple[str, list[Effect]]:
        member = swim.member(node)
        if member is None:
            raise api.ApiError(f"Error force leaving: no member named {node!r}")
        if node == swim.name:
            raise api.ApiError("Error force leaving: this is the local node (use 'agentctl leave')")
        effects = swim.serf_message(now, swim.serf.force_leave(node))
        after = swim.member(node)
        return (after.status.label if after is not None else "reaped"), effects

    status = await rt.driver.call(run)
    log.info(kv("force-leave", member=node, status=status))
    return {"name": node, "status": status}


def _filters(args: dict[str, Any]) -> list[bytes]:
    filters: list[bytes] = []
    nodes = args.get("nodes") or []
    if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
        raise api.ApiError('"nodes" must be a list of node names')
    if nodes:
        filters.append(serfcompat.encode_node_filter(nodes))
    tags = args.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise api.ApiError('"tags" must map tag names to regular expressions')
    for tag in sorted(tags):
        filters.append(serfcompat.encode_tag_filter(tag, tags[tag]))
    return filters


async def query(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    """``{"name", "payload", "nodes": [..], "tags": {tag: regex}, "timeout": s, "ack": bool,
    "relay_factor": 0..255}``:
    a serf query with serf's filters; waits for the timeout and returns acks and responses."""
    name = _name(req.args, "query")
    payload = _payload(req.args)
    filters = _filters(req.args)
    want_ack = req.args.get("ack", True)
    if not isinstance(want_ack, bool):
        raise api.ApiError('"ack" must be true or false')
    timeout_arg = req.args.get("timeout")
    if timeout_arg is not None and (
        not isinstance(timeout_arg, int | float) or isinstance(timeout_arg, bool)
        or not 0 < timeout_arg <= MAX_QUERY_TIMEOUT
    ):
        raise api.ApiError(f'"timeout" must be a number of seconds in (0, {MAX_QUERY_TIMEOUT:g}]')
    relay_factor = req.args.get("relay_factor", 0)
    if not isinstance(relay_factor, int) or isinstance(relay_factor, bool) or not 0 <= relay_factor <= 255:
        raise api.ApiError("Relay factor must be between 0 and 255")
    if rt.queries is None:
        rt.queries = QueryBook(rt.driver)
    book: QueryBook = rt.queries

    def run(swim: Swim, now: float) -> tuple[tuple[Any, float, int], list[Effect]]:
        timeout = float(timeout_arg) if timeout_arg is not None else query_timeout(swim)
        try:
            qid, effects = swim.send_query(now, name, payload, timeout=timeout, filters=filters,
                                           want_ack=want_ack, relay_factor=relay_factor)
        except ValueError as exc:
            raise api.ApiError(f"Error sending query: {exc}") from None
        live = sum(1 for m in swim.members() if m.status in (Status.ALIVE, Status.SUSPECT))
        return (book.expect(qid), timeout, live), effects

    answers, timeout, live = await rt.driver.call(run)
    with trio.move_on_after(timeout + 1.0):
        await answers.done.wait()
    return {
        "name": name,
        "timeout": timeout,
        "live_members": live,
        "acks": list(answers.acks) if want_ack else [],
        "responses": {
            node: base64.b64encode(body).decode("ascii") for node, body in sorted(answers.responses.items())
        },
    }


async def rtt(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    """``{"nodes": [A] or [A, B]}``: the round trip serf's coordinates estimate between A
    and B (B: this node), like ``serf rtt``."""
    nodes = req.args.get("nodes")
    if not isinstance(nodes, list) or not 1 <= len(nodes) <= 2 or not all(isinstance(n, str) and n for n in nodes):
        raise api.ApiError("One or two node names must be specified")

    def run(swim: Swim, now: float) -> tuple[tuple[list[str], float], list[Effect]]:
        names = [nodes[0], nodes[1] if len(nodes) == 2 else swim.name]
        coords = []
        for name in names:
            coord = swim.serf.coordinate(name)
            if coord is None:
                raise api.ApiError(f"Could not find a coordinate for node {name!r}")
            coords.append(coord)
        return (names, coords[0].distance(coords[1])), []

    names, seconds = await rt.driver.call(run)
    return {"nodes": names, "rtt_ms": round(seconds * 1000.0, 3)}


def serf_ops() -> dict[str, Op]:
    return {
        "event": Op(event, "send a serf user event"),
        "user-events": Op(user_events, "the recent serf user events this node saw"),
        "force-leave": Op(force_leave, "mark a failed member left (serf's force-leave)"),
        "query": Op(query, "send a serf query with filters and collect the answers"),
        "rtt": Op(rtt, "the round trip between two nodes estimated from serf's coordinates"),
    }
