"""Log lines: one event per line, key=value, values quoted only when needed."""

from __future__ import annotations

import io
import logging

import pytest

from agent import log as agent_log


def test_kv_quotes_only_when_needed() -> None:
    line = agent_log.kv("member-joined", member="h1", addr="[fd00::1]:7946", ok=True, n=3,
                        msg='two words "q"', skip=None)
    assert line == 'event=member-joined member=h1 addr=[fd00::1]:7946 ok=true n=3 msg="two words \\"q\\""'
    assert agent_log.kv("x", empty="") == 'event=x empty=""'
    assert "\n" not in agent_log.kv("x", text="a\nb")


def test_setup_formats_one_line_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:123")  # under journald: no timestamp of our own
    out = io.StringIO()
    agent_log.setup("info", out)
    logger = logging.getLogger("agent.test")
    logger.debug(agent_log.kv("hidden"))
    logger.warning(agent_log.kv("shown", k="v"))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception(agent_log.kv("failed"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "level=warning event=shown k=v"
    assert lines[1].startswith("level=error event=failed exc=")
    assert len(lines) == 2
