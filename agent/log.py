"""Structured, journald-friendly logging: one line per event, ``key=value`` pairs or JSON.

Owns: the line formats and ``kv`` (render fields). ``kv`` lines look like
``level=info event=member-joined member=h2 addr=10.0.0.2:7946``; the ``json``
format renders the same fields as one JSON object per line (``parse_kv`` reads
them back, so every message is written once, as ``kv``). A timestamp is added
only when stderr is not the journal (systemd sets ``JOURNAL_STREAM``), because
journald stamps every line itself. Does not: decide what is logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

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


_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)(?:\s+|$)')


_BAD = object()
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?\Z")


def _typed(token: str) -> Any:
    """Quoted -> the string; bare true/false/numbers -> bool/int/float; else the text."""
    if token.startswith('"'):
        try:
            return json.loads(token)
        except ValueError:
            return _BAD
    if token in ("true", "false"):
        return token == "true"
    if _NUMBER.match(token):
        return float(token) if "." in token else int(token)
    return token


def parse_kv(text: str) -> dict[str, Any] | None:
    """A ``kv`` line back into fields; None when the text is not entirely key=value pairs."""
    fields: dict[str, Any] = {}
    pos = 0
    while pos < len(text):
        m = _PAIR.match(text, pos)
        if m is None or m.end() == pos:
            return None
        key, value = m.group(1), m.group(2)
        fields[key] = _typed(value)
        if fields[key] is _BAD:
            return None
        pos = m.end()
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, *, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {}
        if self.timestamps:
            obj["ts"] = round(record.created, 3)
        obj["level"] = record.levelname.lower()
        message = record.getMessage()
        fields = parse_kv(message)
        if fields is None:
            obj["msg"] = message
        else:
            for k, v in fields.items():
                obj.setdefault(k, v)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, separators=(",", ":"))


def setup(level: str, stream: TextIO | None = None, *, fmt: str = "kv") -> None:
    """Configure the ``agent`` logger tree (idempotent); ``fmt`` is ``kv`` or ``json``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    timestamps = "JOURNAL_STREAM" not in os.environ
    formatter = JsonFormatter if fmt == "json" else KeyValueFormatter
    handler.setFormatter(formatter(timestamps=timestamps))
    root = logging.getLogger("agent")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
