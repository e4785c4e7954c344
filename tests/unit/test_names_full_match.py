"""Names are checked by full-match rules: a trailing newline is not a valid ending.

Issue 18 item 10: ``re.match`` with a ``$`` anchor accepts ``"evil\\n"`` (``$`` also
matches before a final newline), which let a second network ``evil\\n`` stand beside
``evil`` and broke the ``network ls`` table. Every name rule anchors with ``\\Z``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent.overlay.veths import PlumbError, netns_path
from agent.runtimes.cni.spec import CniError, check_container_id
from agent.store.files import StateStore
from gossip.tables.ipam import parse_mac
from gossip.tables.rows import TableError, check_name, is_hex_id


class _Fake:
    path = "/nonexistent"


CASES: list[tuple[str, Callable[[str], Any], str, type[Exception]]] = [
    ("network/endpoint name", lambda s: check_name(s, "network"), "evil", TableError),
    ("MAC", parse_mac, "02:42:0a:00:00:02", TableError),
    ("CNI container id", check_container_id, "abc123", CniError),
    ("state record", lambda s: StateStore.file(_Fake(), s), "endpoints", ValueError),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("what", "check", "good", "error"), CASES, ids=[c[0] for c in CASES])
def test_a_trailing_newline_is_refused(what: str, check: Callable[[str], Any], good: str,
                                       error: type[Exception]) -> None:
    check(good)  # the valid name passes
    for bad in (good + "\n", good + "\r\n", "\n" + good):
        with pytest.raises(error):
            check(bad)


def test_hex_ids_and_netns_names_are_full_match() -> None:
    assert is_hex_id("ab" * 32) and not is_hex_id("ab" * 32 + "\n")
    with pytest.raises(PlumbError):
        netns_path("no-such-netns-for-this-test\n")
