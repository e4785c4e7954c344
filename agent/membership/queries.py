"""Collects the answers to serf queries this agent sends (``agentctl keys`` cluster-wide).

Owns: matching ``QueryResponse``/``QueryFinished`` effects to the control request
that sent the query. Does not: send the query or time it out (the core does), or
decide what an answer means (``gossip.serf.keyops``); this only waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from agent.membership.driver import Driver
from gossip.effects import QueryFinished, QueryResponse
from gossip.serf.keyops import QueryTally


@dataclass
class QueryResult(QueryTally):
    """The answers so far (``QueryTally``: the same rule the simulator uses), and
    ``done`` once the core timed the query out."""

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
        if result is not None:
            result.add(effect)

    def _finished(self, effect: QueryFinished) -> None:
        result = self._pending.pop(effect.query_id, None)
        if result is not None:
            result.done.set()
