"""SWIM + Lifeguard membership state machine (sans-IO).  -- API STUB, being implemented --"""

from __future__ import annotations

import random
from collections.abc import Sequence

from crypto.keyring import Keyring
from gossip.config import Config
from gossip.delegate import Delegate
from gossip.effects import Address, Effect
from gossip.members import Member


class Swim:
    def __init__(
        self,
        config: Config,
        name: str,
        addr: Address,
        *,
        rng: random.Random,
        now: float,
        delegate: Delegate | None = None,
        keyring: Keyring | None = None,
        incarnation: int = 0,
    ) -> None:
        raise NotImplementedError

    def handle_packet(self, now: float, src: Address, data: bytes) -> list[Effect]:
        raise NotImplementedError

    def handle_stream(self, now: float, src: Address, data: bytes) -> tuple[bytes | None, list[Effect]]:
        raise NotImplementedError

    def handle_stream_reply(self, now: float, token: int, reply: bytes | None) -> list[Effect]:
        raise NotImplementedError

    def tick(self, now: float) -> list[Effect]:
        raise NotImplementedError

    def next_deadline(self) -> float:
        raise NotImplementedError

    def join(self, now: float, seeds: Sequence[Address]) -> list[Effect]:
        raise NotImplementedError

    def leave(self, now: float) -> list[Effect]:
        raise NotImplementedError

    def leave_done(self) -> bool:
        raise NotImplementedError

    def set_meta(self, now: float, meta: bytes) -> list[Effect]:
        raise NotImplementedError

    def members(self) -> list[Member]:
        raise NotImplementedError

    def member(self, name: str) -> Member | None:
        raise NotImplementedError

    @property
    def local(self) -> Member:
        raise NotImplementedError
