"""The control API's wire format, shared by the agent (``agent.control.server``) and ``agentctl``.

Versioned JSON, one object per line, over a Unix stream socket:

    request  {"v": 1, "op": "members", "args": {...}, "id": any}   ("args", "id" optional)
    reply    {"v": 1, "ok": true, "result": ..., "id": ...}
             {"v": 1, "ok": false, "error": "one line", "id": ...}
    stream   after an ok reply to a streaming op ("events"):
             {"v": 1, "ok": true, "event": {...}} per line until either side closes

A connection may carry several requests in turn. A request line is at most
``MAX_REQUEST`` bytes, and every line (request or reply) is parsed by the bounded
decoder ``agent.limits.loads`` (nesting depth ``agent.limits.JSON_MAX_DEPTH``): a bad
line is an error reply, never an exception out of the parser. New fields may be added
to results; clients ignore unknown fields. Breaking changes bump ``VERSION``.
Owns: framing, validation of requests (``ApiError`` for a bad one), and the JSON
view of a member (also used for the ``events`` stream). Does not: touch sockets
(``agent.control.server``, ``agent.ctl.client``) or implement any op.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent import limits
from gossip.members import Member
from gossip.serf.payloads import decode_tags
from gossip.tables import protocol as tables_protocol

VERSION = 1
MAX_REQUEST = limits.CONTROL_MAX_REQUEST
MAX_REPLY = limits.CONTROL_MAX_REPLY


class ApiError(ValueError):
    """A request the agent refuses; the message is sent back as ``error``."""


@dataclass(frozen=True)
class Request:
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    id: Any = None


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode() + b"\n"


def request_line(op: str, args: dict[str, Any] | None = None) -> bytes:
    obj: dict[str, Any] = {"v": VERSION, "op": op}
    if args:
        obj["args"] = args
    return encode(obj)


def ok(result: Any, req_id: Any = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"v": VERSION, "ok": True, "result": result}
    if req_id is not None:
        reply["id"] = req_id
    return reply


def error(message: str, req_id: Any = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"v": VERSION, "ok": False, "error": message}
    if req_id is not None:
        reply["id"] = req_id
    return reply


def event(body: dict[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "ok": True, "event": body}


def parse_request(line: bytes) -> Request:
    """One request line (without its newline) -> Request; ApiError says what is wrong."""
    try:
        obj = limits.loads(line, max_bytes=MAX_REQUEST, what="request")
    except limits.JSONLimitError as exc:
        raise ApiError(f"malformed request: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError("malformed request: expected a JSON object")
    version = obj.get("v")
    if version is None:
        raise ApiError("malformed request: missing protocol version \"v\"")
    if version != VERSION or isinstance(version, bool):
        raise ApiError(f"unsupported protocol version {version!r} (this agent speaks {VERSION})")
    op = obj.get("op")
    if not isinstance(op, str) or not op:
        raise ApiError("malformed request: \"op\" must be a non-empty string")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise ApiError("malformed request: \"args\" must be an object")
    return Request(op=op, args=args, id=obj.get("id"))


def parse_reply(line: bytes) -> Any:
    """One reply line from the agent (agentctl's side); ValueError (one line) when it is
    not JSON, too large or nested too deeply."""
    return limits.loads(line, max_bytes=MAX_REPLY, what="reply from the agent")


def member_json(m: Member, local_name: str) -> dict[str, Any]:
    try:
        tags = decode_tags(m.meta)
    except ValueError:
        tags = {}
    return {
        "name": m.name,
        "address": m.addr,
        "port": m.port,
        "status": m.status.label,
        "incarnation": m.incarnation,
        "tags": tags,
        "protocol": _protocol_text(m.meta),
        "self": m.name == local_name,
    }


def _protocol_text(meta: bytes) -> str | None:
    """The tables protocol range a member advertises ("1-2"), None for serf agents."""
    r = tables_protocol.member_range(meta)
    return None if r is None else tables_protocol.tag_value(*r)
