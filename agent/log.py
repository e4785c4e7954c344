"""Structured, journald-friendly logging: one line per event, ``key=value`` pairs.

Owns: the line format and ``kv`` (render fields). Lines look like
``level=info event=member-joined member=h2 addr=10.0.0.2:7946``. A timestamp is
prefixed only when stderr is not the journal (systemd sets ``JOURNAL_STREAM``),
because journald stamps every line itself. Does not: decide what is logged.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/[]*,@+")


def quote(value: object) -> str:
    """A value as one token: bare when it is plain, JSON-quoted otherwise."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if text and all(ch in _PLAIN for ch in text):
        return text
    return json.dumps(text)


def kv(event: str, **fields: object) -> str:
    """``event=NAME k=v ...`` with fields in the given order; None values are left out."""
    parts = [f"event={quote(event)}"]
    parts.extend(f"{k}={quote(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


class KeyValueFormatter(logging.Formatter):
    def __init__(self, *, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        head = f"level={record.levelname.lower()}"
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            head = f"ts={stamp}.{int(record.msecs):03d} {head}"
        line = f"{head} {record.getMessage()}"
        if record.exc_info:
            # Keep one event per line: the traceback goes on as an escaped field.
            line += f" exc={quote(self.formatException(record.exc_info))}"
        return line


def setup(level: str, stream: TextIO | None = None) -> None:
    """Configure the ``agent`` logger tree (idempotent)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(KeyValueFormatter(timestamps="JOURNAL_STREAM" not in os.environ))
    root = logging.getLogger("agent")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
