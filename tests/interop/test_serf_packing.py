"""Serf accepts gossip packed by compressed size (Config.compressed_packing).

Our core fills a compressed datagram with more raw bytes than memberlist's 1,400-byte
budget; memberlist inflates a compress message without a size limit, so serf must take
every message in it. The packet here is built with the same encoder the core uses: 40
alive messages about members on the sender's host (ports nobody listens on, so serf's
probes stay inside the lab), raw well above the budget, compressed below it.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import pytest

from agent.lab.netlab import Lab
from bench.cluster import Cluster
from gossip.config import Config
from gossip.wire import codec as wire
from gossip.wire.messages import Alive

pytestmark = [pytest.mark.netns, pytest.mark.interop]

BUDGET = Config.lan().udp_buffer_size
_DECODE_TROUBLE = re.compile(r"decompress|decode|compound|truncated|panic", re.IGNORECASE)


def test_serf_takes_every_message_of_a_packet_packed_beyond_the_raw_budget(
    lab_cluster: Callable[[int], tuple[Lab, Cluster]],
) -> None:
    lab, cl = lab_cluster(2)
    serf_host, sender = lab.hosts
    serf = cl.start_serf(serf_host, "serf-0")
    cl.wait_ready([serf], timeout=10)

    addr = socket.inet_aton(sender.addr)
    meta = b"\xff\x82\xa4role\xadoverlay-agent\xa2ov\xa11"
    news = [Alive(1, f"packed-{i:02d}", addr, 20000 + i, meta) for i in range(40)]
    parts = [wire.encode(m) for m in news]
    packet = wire.encode_packet(parts, compress=True, crc=False, keyring=None)
    raw = 2 + sum(len(p) + 2 for p in parts)
    assert raw > 2 * BUDGET and len(packet) <= BUDGET, (raw, len(packet))

    with lab.socket(sender, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((sender.addr, 0))
        s.sendto(packet, (serf_host.addr, 7946))

    names = {m.node for m in news}
    cl.wait_for([serf], lambda view: names <= set(view), 15.0, what="serf to list every member")
    trouble = [ln for ln in serf.proc.log_text().splitlines() if _DECODE_TROUBLE.search(ln)]
    assert trouble == [], "\n".join(trouble[:5])
