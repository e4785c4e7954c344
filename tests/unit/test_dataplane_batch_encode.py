"""The batcher's template encoder writes byte for byte what packing every field of the
kernel's layouts writes (the reference below), for every entry kind, both address
families, mixed devices and interleavings."""

from __future__ import annotations

import random
import socket
import struct

from dataplane import rtnl
from dataplane.netlink_batch import (
    FDB_DEL,
    FDB_DEL_ANY,
    FDB_SET,
    FLOOD_ADD,
    NEIGH_DEL,
    NEIGH_SET,
    Batcher,
    Entry,
)

HDR_ND = "=IHHIIBxxxiHBB"
SET = rtnl.NLM_F_REQUEST | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
APPEND = rtnl.NLM_F_REQUEST | rtnl.NLM_F_CREATE | rtnl.NLM_F_APPEND
PERM = rtnl.NUD_PERMANENT | rtnl.NUD_NOARP


def ip_raw(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def mac_raw(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def reference(entries: list[Entry], seq: int) -> bytes:
    """Every field packed, one full struct per message (rtnetlink's ndmsg layouts)."""
    out = b""
    for kind, ifindex, key, value in entries:
        if kind in (FDB_SET, FDB_DEL, FLOOD_ADD):
            dst = ip_raw(key if kind == FLOOD_ADD else value)
            mac = bytes(6) if kind == FLOOD_ADD else mac_raw(key)
            st = struct.Struct(HDR_ND + f"HH6sxxHH{len(dst)}s")
            mtype = rtnl.RTM_DELNEIGH if kind == FDB_DEL else rtnl.RTM_NEWNEIGH
            flags = {FDB_SET: SET, FLOOD_ADD: APPEND, FDB_DEL: rtnl.NLM_F_REQUEST}[kind]
            state = 0 if kind == FDB_DEL else PERM
            out += st.pack(st.size, mtype, flags, seq, 0, rtnl.AF_BRIDGE, ifindex, state,
                           rtnl.NTF_SELF, 0, 10, rtnl.NDA_LLADDR, mac, 4 + len(dst), rtnl.NDA_DST, dst)  # fmt: skip
        elif kind in (NEIGH_SET, NEIGH_DEL):
            ip = ip_raw(key)
            fam = socket.AF_INET if len(ip) == 4 else socket.AF_INET6
            if kind == NEIGH_SET:
                st = struct.Struct(HDR_ND + f"HH{len(ip)}sHH6sxx")
                out += st.pack(st.size, rtnl.RTM_NEWNEIGH, SET, seq, 0, fam, ifindex, rtnl.NUD_PERMANENT,
                               0, 0, 4 + len(ip), rtnl.NDA_DST, ip, 10, rtnl.NDA_LLADDR, mac_raw(value))  # fmt: skip
            else:
                st = struct.Struct(HDR_ND + f"HH{len(ip)}s")
                out += st.pack(st.size, rtnl.RTM_DELNEIGH, rtnl.NLM_F_REQUEST, seq, 0, fam, ifindex, 0,
                               0, 0, 4 + len(ip), rtnl.NDA_DST, ip)  # fmt: skip
        else:
            st = struct.Struct(HDR_ND + "HH6sxx")
            out += st.pack(st.size, rtnl.RTM_DELNEIGH, rtnl.NLM_F_REQUEST, seq, 0, rtnl.AF_BRIDGE, ifindex,
                           0, rtnl.NTF_SELF, 0, 10, rtnl.NDA_LLADDR, mac_raw(key))  # fmt: skip
        seq += 1
    return out


def random_entry(rng: random.Random) -> Entry:
    kind = rng.choice((FDB_SET, FDB_DEL, FLOOD_ADD, NEIGH_SET, NEIGH_DEL, FDB_DEL_ANY))
    v6 = rng.random() < 0.3
    ip = (
        f"2001:db8::{rng.randrange(1, 65535):x}"
        if v6
        else f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    )
    mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
    ifindex = rng.choice((3, 4, 70000))
    if kind in (FDB_SET, FDB_DEL):
        return (kind, ifindex, mac, ip)
    if kind == NEIGH_SET:
        return (kind, ifindex, ip, mac)
    if kind == FDB_DEL_ANY:
        return (kind, ifindex, mac, "")
    return (kind, ifindex, ip, "")


def test_template_encoder_matches_the_full_layouts() -> None:
    rng = random.Random(5)
    b = Batcher(None)  # type: ignore[arg-type]  # encode needs no socket
    for _ in range(40):
        entries = [random_entry(rng) for _ in range(rng.randrange(1, 60))]
        # Runs of one shape too (the common case: a program is long runs).
        entries += [entries[-1]] * rng.randrange(0, 5)
        first = rng.randrange(1, 1 << 30)
        assert bytes(b.encode(entries, first)) == reference(entries, first)


def test_column_encoder_matches_the_template_encoder() -> None:
    """A uniform group packed by columns is byte for byte what the per-entry encoder
    writes, for every kind, both families and any sequence number."""
    rng = random.Random(11)
    b = Batcher(None)  # type: ignore[arg-type]
    for _ in range(60):
        proto = random_entry(rng)
        kind, ifindex = proto[0], proto[1]
        v6 = ":" in (proto[3] if kind in (FDB_SET, FDB_DEL) else proto[2])
        entries = []
        for _ in range(rng.randrange(1, 300)):
            e = random_entry(rng)
            while e[0] != kind or (":" in (e[3] if kind in (FDB_SET, FDB_DEL) else e[2])) != v6:
                e = random_entry(rng)
            entries.append((kind, ifindex, e[2], e[3]))
        first = rng.randrange(1, (1 << 31) - 400)
        keys = [e[2] for e in entries]
        values = [e[3] for e in entries]
        got = b.encode_group(kind, ifindex, keys, values, first)
        assert got is not None
        assert bytes(got) == bytes(b.encode(entries, first)) == reference(entries, first)


def test_column_encoder_declines_mixed_or_malformed_groups() -> None:
    b = Batcher(None)  # type: ignore[arg-type]
    mac = "02:42:0a:00:00:01"
    ok = [mac] * 20
    assert b.encode_group(FDB_SET, 3, ok, ["192.0.2.1"] * 20, 1) is not None
    mixed = ["192.0.2.1"] * 19 + ["2001:db8::1"]
    assert b.encode_group(FDB_SET, 3, ok, mixed, 1) is None  # both families
    assert b.encode_group(NEIGH_SET, 3, mixed, ok, 1) is None
    assert b.encode_group(FDB_SET, 3, ok, [*["192.0.2.1"] * 19, "bad"], 1) is None
    for bad in ("02:42:0a:00:00:1", "0242:0a:00:00:01:", "02:42:0a:00:00:0g", "02 42 0a 00 00 01",
                "02:42:0a:00:00:01:02", "  :42:0a:00:00:01"):  # fmt: skip
        assert b.encode_group(FDB_SET, 3, [*ok[:19], bad], ["192.0.2.1"] * 20, 1) is None, bad
    assert b.encode_group(FDB_SET, 3, ok, ["192.0.2.1"] * 19, 1) is None  # lengths differ
