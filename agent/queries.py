"""Collects the answers to serf queries this agent sends (``agentctl keys`` cluster-wide).

Owns: matching ``QueryResponse``/``QueryFinished`` effects to the control request
that sent the query. The core sends the query and times it out; this only waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from agent.driver import Driver
from gossip.effects import QueryFinished, QueryResponse


@dataclass
class QueryResult:
    acks: list[str] = field(default_factory=list)
    responses: dict[str, bytes] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)


class QueryBook:
    def __init__(self, driver: Driver) -> None:
        self._pending: dict[int, QueryResult] = {}
        driver.on_effect(QueryResponse, self._response)
        driver.on_effect(QueryFinished, self._finished)

    def expect(self, query_id: int) -> QueryResult:
        """Register before the query's effects are performed (inside the driver call)."""
        result = QueryResult()
        self._pending[query_id] = result
        return result

    def _response(self, effect: QueryResponse) -> None:
        result = self._pending.get(effect.query_id)
        if result is None:
            return
        if effect.ack:
            if effect.node not in result.acks:
                result.acks.append(effect.node)
        else:
            result.responses.setdefault(effect.node, effect.payload)

    def _finished(self, effect: QueryFinished) -> None:
        result = self._pending.pop(effect.query_id, None)
        if result is not None:
            result.done.set()
