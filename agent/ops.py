"""The built-in control ops: ``members``, ``status``, ``leave``, ``events``, ``keys``.

Owns: what each op does and the shape of its result (see ``agent.api`` for the
framing). Core state is read and changed only through ``Driver.call`` so that
an op is atomic with respect to gossip. Later layers add ops of their own with
``ControlServer.register`` (networks, endpoints, dataplane).
Does not: parse or frame requests (``agent.control``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import trio

from agent import api, keys
from agent.control import Op, agent_version
from agent.events import OVERFLOW
from agent.log import kv
from agent.queries import QueryBook
from agent.runtime import Runtime
from gossip.effects import Effect
from gossip.members import Status
from gossip.swim import Swim

log = logging.getLogger("agent.ops")

LEAVE_WAIT = 10.0
"""How long ``leave`` waits for the leave to go out before replying anyway."""


async def members(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
    def view(swim: Swim, now: float) -> tuple[list[dict[str, Any]], list[Effect]]:
        me = swim.local.name
        return [api.member_json(m, me) for m in sorted(swim.members(), key=lambda m: m.name)], []

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
        }, []

    result = await rt.driver.call(view)
    result.update(rt.info)
    result.update({
        "node_id": rt.node_id,
        "version": agent_version(),
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
        "leave": Op(leave, "leave the cluster gracefully, then stop", stops_agent=True),
        "events": Op(events, "stream member events", streaming=True),
        "keys": Op(keys_op, "gossip keyring: list, install, use, remove, require, allow-plaintext"),
    }
