"""The built-in control ops: ``members``, ``status``, ``join``, ``leave``, ``events``, ``keys``.

Owns: what each op does and the shape of its result (see ``agent.control.protocol`` for the
framing). Core state is read and changed only through ``Driver.call`` so that
an op is atomic with respect to gossip. Later layers add ops of their own with
``ControlServer.register`` (``agent.overlay.ops``: network, endpoint, dataplane).
Does not: parse or frame requests (``agent.control.server``) or print anything
(``agent.ctl``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import trio

from agent import __version__
from agent.addresses import DEFAULT_PORT, Address, UsageError, format_address, parse_address
from agent.control import protocol as api
from agent.control.server import Op
from agent.events import OVERFLOW
from agent.log import kv
from agent.membership.queries import QueryBook
from agent.membership.serfops import serf_ops
from agent.runtime import Runtime
from gossip.effects import Effect, JoinFinished
from gossip.members import Status
from gossip.swim import Swim
from gossip.tables import protocol as tables_protocol

log = logging.getLogger("agent.control.ops")

LEAVE_WAIT = 10.0
"""How long ``leave`` waits for the leave to go out before replying anyway."""
MAX_JOIN_SEEDS = 256
JOIN_WAIT_EXTRA = 2.0
"""``join`` waits for the push/pull with every seed: the TCP timeout, plus this."""


async def members(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    def view(swim: Swim, now: float) -> tuple[list[dict[str, Any]], list[Effect]]:
        me = swim.local.name
        rows = [api.member_json(m, me) for m in sorted(swim.members(), key=lambda m: m.name)]
        for row in rows:  # serf's network coordinate, once a ping exchanged one (issue 16)
            coord = swim.serf.coordinate(row["name"])
            row["coordinate"] = coord.to_json() if coord is not None else None
        return rows, []

    return await rt.driver.call(view)


async def status(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    def view(swim: Swim, now: float) -> tuple[dict[str, Any], list[Effect]]:
        counts = {s.label: 0 for s in Status}
        for m in swim.members():
            counts[m.status.label] += 1
        counts["total"] = sum(counts.values())
        local = swim.local
        return {
            "node": local.name,
            "address": local.addr,
            "port": local.port,
            "incarnation": local.incarnation,
            "members": counts,
            "encrypted": swim.keyring is not None and swim.keyring.primary is not None,
            "require_encryption": swim.require_encryption,
            "health_score": swim.awareness,
            "protocol": {
                "speaks": tables_protocol.tag_value(),
                "cluster": tables_protocol.common_version(
                    m.meta for m in swim.members() if m.name != local.name and m.status in (Status.ALIVE, Status.SUSPECT)),
            },
        }, []

    result = await rt.driver.call(view)
    result.update(rt.info)
    result.update({
        "node_id": rt.node_id,
        "version": __version__,
        "uptime": round(time.time() - rt.started_at, 1),
        "ready": rt.readiness.ready,
        "waiting_for": rt.readiness.pending,
        "leaving": rt.driver.leaving,
        "join": rt.join_outcome,
        "subscribers": rt.hub.subscriber_count,
        "counters": dataclasses.asdict(rt.driver.counters),
        "warnings": rt.warnings(),
    })
    for section in rt.status_sections:
        result.update(section())
    return result


class JoinWaiters:
    """``join`` requests waiting for their ``JoinFinished`` (one driver listener for all).

    The core does not tag join batches, so an outcome is matched to the oldest waiter
    whose seeds it accounts for exactly (contacted + failed = its seeds, the failed among
    them); joins at the same time with the same seeds are interchangeable anyway."""

    def __init__(self, rt: Runtime) -> None:
        self.waiting: list[tuple[frozenset[Address], int, trio.Event, list[JoinFinished]]] = []
        rt.driver.on_effect(JoinFinished, self._finished)

    def expect(self, seeds: list[Address]) -> tuple[trio.Event, list[JoinFinished]]:
        done, box = trio.Event(), list[JoinFinished]()
        self.waiting.append((frozenset(seeds), len(seeds), done, box))
        return done, box

    def forget(self, done: trio.Event) -> None:
        self.waiting = [w for w in self.waiting if w[2] is not done]

    def _finished(self, effect: JoinFinished) -> None:
        for entry in self.waiting:
            seeds, count, done, box = entry
            if effect.contacted + len(effect.failed) == count and set(effect.failed) <= seeds:
                box.append(effect)
                done.set()
                self.waiting.remove(entry)
                return


def _join_seeds(args: dict[str, Any]) -> list[Address]:
    raw = args.get("addresses")
    if not isinstance(raw, list) or not raw or not all(isinstance(a, str) for a in raw):
        raise api.ApiError('"addresses" must be a non-empty list of "IP[:PORT]" strings')
    if len(raw) > MAX_JOIN_SEEDS:
        raise api.ApiError(f"at most {MAX_JOIN_SEEDS} addresses per join")
    seeds: list[Address] = []
    for text in raw:
        try:
            addr = parse_address(text, DEFAULT_PORT)
        except UsageError as exc:
            raise api.ApiError(str(exc)) from None
        if addr not in seeds:
            seeds.append(addr)
    return seeds


async def join(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    """``{"addresses": ["IP[:PORT]", ...]}`` (port 7946 by default): join the cluster through
    these seeds, like ``serf join``, with the core's own join (push/pull with each seed).
    Replies when every seed answered or failed: ``{"contacted": n, "failed": [...]}``."""
    seeds = _join_seeds(req.args)
    if rt.driver.leaving:
        raise api.ApiError("the agent is leaving the cluster")
    if rt.joins is None:
        rt.joins = JoinWaiters(rt)
    waiters: JoinWaiters = rt.joins
    done, box = waiters.expect(seeds)
    log.info(kv("join", seeds=",".join(format_address(a) for a in seeds), source="control"))
    try:
        await rt.driver.join(seeds)
        with trio.move_on_after(rt.driver.swim.config.tcp_timeout + JOIN_WAIT_EXTRA):
            await done.wait()
    finally:
        waiters.forget(done)
    if not box:
        raise api.ApiError("the join did not finish in time (see the agent's log)")
    return {"contacted": box[0].contacted, "failed": [format_address(a) for a in box[0].failed]}


async def leave(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    log.info(kv("leave-requested", source="control"))
    rt.shutdown.stopping()
    done = await rt.driver.leave(LEAVE_WAIT)
    return {"left": True, "announced": done}


async def events(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    with rt.hub.subscribe() as channel:
        await stream.send_all(api.encode(api.ok({"subscribed": True}, req.id)))
        async with trio.open_nursery() as nursery:

            async def hang_up_on_eof() -> None:
                # The client sends nothing more; its EOF ends the subscription.
                while await stream.receive_some(4096):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(hang_up_on_eof)
            async for body in channel:
                if body is OVERFLOW:
                    await stream.send_all(api.encode(api.error("event stream overflowed: client too slow")))
                    break
                await stream.send_all(api.encode(api.event(body)))
            nursery.cancel_scope.cancel()
    return None


async def keys_op(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    """``{"action": ACTION, "key": BASE64, "enable": bool, "local": bool}``.

    Applied here, then (unless ``local``) sent to every member as a serf query, the
    way ``serf keys`` does it: serf agents and ours both apply and answer it.
    """
    from agent.membership import keys  # key management is rare: not loaded at every start

    action = req.args.get("action", "list")
    if not isinstance(action, str):
        raise api.ApiError("\"action\" must be a string")
    cluster = not req.args.get("local")
    if rt.queries is None:
        rt.queries = QueryBook(rt.driver)
    book = rt.queries

    def run(swim: Swim, now: float) -> tuple[tuple[dict[str, Any], bool, tuple[bytes, ...], Any], list[Effect]]:
        result, changed = keys.apply(swim, action, req.args)
        ring = swim.keyring.keys if swim.keyring is not None else ()
        effects: list[Effect] = []
        pending = None
        if cluster:
            name, payload = keys.query_for(action, req.args)
            timeout = keys.query_timeout(swim)
            qid, effects = swim.send_query(now, name, payload, timeout=timeout)
            pending = (book.expect(qid), keys.live_members(swim), timeout)
        return (result, changed, ring, pending), effects

    result, changed, ring, pending = await rt.driver.call(run)
    if action in keys.MUTATING:
        log.info(kv("keys", action=action, changed=changed, keys=len(ring),
                    require_encryption=result["require_encryption"]))
    persisted: bool | None = None
    if changed:
        persisted = await rt.persister.save_keyring(ring)
        if not persisted:
            log.warning(kv("keyring-not-persisted", file=rt.persister.keyring_path,
                           error=rt.persister.last_error))
    result.update({
        "action": action,
        "changed": changed,
        "persisted": persisted,
        "keyring_file": rt.persister.keyring_path,
        "cluster_wide": cluster,
    })
    if pending is not None:
        answers, live, timeout = pending
        with trio.move_on_after(timeout + 1.0):
            await answers.done.wait()
        result["cluster"] = keys.cluster_report(result["node"], live, answers.acks, answers.responses)
    return result


def builtin_ops() -> dict[str, Op]:
    return {
        "members": Op(members, "list cluster members"),
        "status": Op(status, "this agent's status, counters and warnings"),
        "join": Op(join, "join the cluster through seed addresses"),
        "leave": Op(leave, "leave the cluster gracefully, then stop", stops_agent=True),
        "events": Op(events, "stream member events", streaming=True),
        "keys": Op(keys_op, "gossip keyring: list, install, use, remove, require, allow-plaintext"),
        **serf_ops(),  # event, user-events, force-leave, query (agent.membership.serfops)
    }
