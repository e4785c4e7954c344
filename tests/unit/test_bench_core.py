"""bench/core.py's recorded streams: what our side does with them, and the record file
format the Go harness reads (no Go needed here)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bench import core


@pytest.mark.parametrize(
    ("name", "alive", "replies"),
    [
        ("join", 21, 0),
        ("probe", 21, 40),
        ("suspect_dead", 2, 0),  # us and the accuser: the other 19 are dead
        ("pushpull", 21, 0),
        ("join_lzw", 21, 0),
        ("probe_aes", 21, 40),
        ("pushpull_aes", 21, 0),
    ],
)
def test_streams_do_what_they_say_on_our_side(name: str, alive: int, replies: int) -> None:
    s = core.build(name, 20)
    (run,) = core.run_ours(s, 1)
    assert run["members"] == alive
    assert run["sent"] == replies
    if name.startswith("pushpull"):
        assert run["sent_bytes"] > 0  # our state went back, 5 times
    assert s.messages == len(s.bodies) > 0


def test_record_file_format(tmp_path: Path) -> None:
    s = core.build("probe", 10)
    path = tmp_path / "s.stream"
    s.write(path)
    raw = path.read_bytes()
    out = []
    pos = 0
    while pos < len(raw):
        kind, ip, (port, n) = (
            raw[pos : pos + 1],
            raw[pos + 1 : pos + 5],
            struct.unpack_from(">HI", raw, pos + 5),
        )
        out.append((kind, (".".join(map(str, ip)), port), raw[pos + 11 : pos + 11 + n]))
        pos += 11 + n
    assert pos == len(raw)
    assert out == s.records
