"""The no-change resync shortcut: dump buffers whose rows did not change are not decoded
again (rtnl.stable_signature + kernel._DumpCache). No kernel: synthetic dump buffers."""

from __future__ import annotations

import struct
from typing import Any

from dataplane import rtnl
from dataplane.kernel import _DumpCache


def fdb_row(mac: bytes, dst: bytes, *, seq: int, age: int, state: int = 0xC0) -> bytes:
    body = rtnl.NDMSG.pack(rtnl.AF_BRIDGE, 5, state, rtnl.NTF_SELF, 0)
    body += rtnl.attr(rtnl.NDA_LLADDR, mac) + rtnl.attr(rtnl.NDA_DST, dst)
    body += rtnl.attr(3, struct.pack("=IIII", age, age + 1, age + 2, 0))  # NDA_CACHEINFO
    return rtnl.HDR.pack(16 + len(body), rtnl.RTM_NEWNEIGH, 2, seq, 77) + body


def neigh_row(ip: bytes, mac: bytes, *, seq: int, age: int) -> bytes:
    body = rtnl.NDMSG.pack(2, 5, rtnl.NUD_PERMANENT, 0, 0)
    body += rtnl.attr(rtnl.NDA_DST, ip) + rtnl.attr(rtnl.NDA_LLADDR, mac)
    body += rtnl.attr(4, struct.pack("=I", 0))  # NDA_PROBES
    body += rtnl.attr(3, struct.pack("=IIII", age, age, age, 0))
    return rtnl.HDR.pack(16 + len(body), rtnl.RTM_NEWNEIGH, 2, seq, 77) + body


def fdb_buf(n: int, *, seq: int, age: int, dst_last: bytes = b"\xc6\x33\x64\x02") -> bytes:
    rows = [
        fdb_row(bytes([2, 0, 0, 0, i >> 8, i & 255]), b"\xc6\x33\x64\x02", seq=seq, age=age + i)
        for i in range(n - 1)
    ]
    rows.append(fdb_row(bytes(6), dst_last, seq=seq, age=age))  # a flood row
    return b"".join(rows)


def test_signature_ignores_sequence_numbers_and_ages_only() -> None:
    a = fdb_buf(50, seq=10, age=100)
    assert len(a) == 50 * 68  # the fixed layout the fast decoder expects
    same = fdb_buf(50, seq=11, age=900)
    other = fdb_buf(50, seq=11, age=900, dst_last=b"\xc6\x33\x64\x03")
    assert a != same
    assert rtnl.stable_signature(a) == rtnl.stable_signature(same)
    assert rtnl.stable_signature(a) != rtnl.stable_signature(other)
    assert rtnl.stable_signature(a[:-4]) is None  # not a whole number of rows
    assert rtnl.stable_signature(b"") is None


def read(
    cache: _DumpCache, bufs: list[bytes]
) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], bool]]:
    fdb: dict[tuple[str, str], str] = {}
    flood: dict[tuple[str, str], bool] = {}
    cache.begin()
    for buf in bufs:
        cache.fdb(buf, "ov-vx", fdb, flood)
    cache.end()
    return fdb, flood


def test_cached_rows_equal_a_fresh_decode_and_changes_are_seen(monkeypatch: Any) -> None:
    decoded: list[int] = []
    real = rtnl.fdb_run_all

    def counting(buf: bytes, *rest: Any) -> bool:
        decoded.append(len(buf))
        return real(buf, *rest)

    monkeypatch.setattr(rtnl, "fdb_run_all", counting)
    cache = _DumpCache()
    first = read(cache, [fdb_buf(40, seq=1, age=5)])
    fresh_fdb: dict[tuple[str, str], str] = {}
    fresh_flood: dict[tuple[str, str], bool] = {}
    rtnl.parse_fdb(fdb_buf(40, seq=1, age=5), fresh_fdb, fresh_flood, "ov-vx")
    assert first == (fresh_fdb, fresh_flood)
    assert len(first[0]) == 39 and list(first[1]) == [("ov-vx", "198.51.100.2")]
    again = read(cache, [fdb_buf(40, seq=2, age=500)])  # same rows, other ages: a hit
    assert again == first
    assert len(decoded) == 1  # the second read decoded nothing
    moved = read(cache, [fdb_buf(40, seq=3, age=7, dst_last=b"\xc6\x33\x64\x09")])
    assert list(moved[1]) == [("ov-vx", "198.51.100.9")]
    # The returned maps are the caller's own: changing them leaves the cache intact.
    moved[0].clear()
    assert len(read(cache, [fdb_buf(40, seq=4, age=8, dst_last=b"\xc6\x33\x64\x09")])[0]) == 39


def test_rows_the_fast_decoder_skips_are_not_cached_wrongly() -> None:
    # A non-permanent row has the fixed size but is not ours: decoded (and skipped)
    # the same way on a hit as on a miss.
    rows = fdb_buf(10, seq=1, age=1) + fdb_row(
        b"\x02\0\0\0\0\xff", b"\xc6\x33\x64\x02", seq=1, age=1, state=0x02
    )
    cache = _DumpCache()
    a = read(cache, [rows])
    b = read(cache, [rows])
    assert a == b and ("ov-vx", "02:00:00:00:00:ff") not in a[0]


def test_neighbour_buffers_hit_too() -> None:
    def buf(seq: int, age: int, last: bytes) -> bytes:
        rows = [
            neigh_row(bytes([10, 0, 0, i]), b"\x02\0\0\0\0" + bytes([i]), seq=seq, age=age)
            for i in range(1, 20)
        ]
        return b"".join(rows) + neigh_row(bytes([10, 0, 1, 1]), last, seq=seq, age=age)

    assert len(buf(1, 1, bytes(6))) == 20 * 76
    cache = _DumpCache()
    seen = []
    for seq, age, last in ((1, 1, b"\x02" * 6), (2, 99, b"\x02" * 6), (3, 5, b"\x04" * 6)):
        neigh: dict[tuple[str, str], str] = {}
        cache.begin()
        cache.neigh(buf(seq, age, last), "ov-vx", neigh)
        cache.end()
        seen.append(neigh)
    assert seen[0] == seen[1] and len(seen[0]) == 20
    assert seen[2][("ov-vx", "10.0.1.1")] == "04:04:04:04:04:04"
