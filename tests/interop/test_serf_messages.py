"""Serf's message layer across our agents (issue 16): intents, user events, queries.

Real Debian serf agents and ours in one lab (agent/lab/netlab.py), LAN profile. The
serf↔serf paths are cut, so whatever one serf agent learns from the other it learns
through our agents' relays:
- ``serf event`` reaches the far serf agent and shows in ``agentctl events --recent``;
  ``agentctl event`` reaches both serf agents (their logs: "Received event: user-event");
- ``serf query _serf_ping`` gets one ack per member and no response (as serf answers);
- ``serf query -relay-factor 3`` with the querier's direct paths to one of ours and to
  the far serf agent cut: both acks arrive, through relays (ours sending its answer
  through others, ours forwarding serf's relay message); ``agentctl query
  --relay-factor 3`` from that agent of ours gets serf-0's ack through relays too, and
  ``--node`` addresses one member only;
- ``serf leave`` of the far serf agent: the near one shows it ``left`` (its intent came
  through ours before the memberlist dead), never ``failed``;
- force-leave both ways: ``serf force-leave`` of a killed agent of ours makes ours show
  it ``left``; ``agentctl force-leave`` of a killed serf agent makes serf show it ``left``.
Deadlines are generous bounds, not performance figures (those: ``python -m bench
serf-conformance``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest

from agent.lab.netlab import Host, Lab
from bench.cluster import Cluster, Node, all_alive, sees_status
from bench.serfnode import RPC_ADDR, serf_binary
from gossip.config import Config, suspicion_bounds

pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.slow]

CONFIG = Config.lan()
JOIN_DEADLINE = 3 * CONFIG.push_pull_interval + 15.0
EVENT_DEADLINE = 10.0
"""Relayed at once by each agent (quiet gossip) or on the next 200 ms beat: seconds at most."""
LEAVE_DEADLINE = 15.0
RELAY_TRIES = 3
"""Serf's random relay choice misses the only working relay ~3 % of the time (see below)."""

LabCluster = Callable[[int], tuple[Lab, Cluster]]


def detection_deadline(n: int) -> float:
    _, high = suspicion_bounds(CONFIG, n)
    return high + CONFIG.probe_interval * CONFIG.awareness_max_multiplier + CONFIG.probe_timeout + 2.0


def serf_cli(lab: Lab, host: Host, *args: str, timeout: float = 30.0) -> str:
    serf = serf_binary()
    assert serf is not None
    r = lab.run(host, [serf, args[0], f"-rpc-addr={RPC_ADDR[0]}:{RPC_ADDR[1]}", *args[1:]],
                timeout=timeout, check=False)
    assert r.returncode == 0, f"serf {' '.join(args)}: rc={r.returncode} {r.stderr.strip()}"
    return r.stdout


def wait_until(what: str, predicate: object, timeout: float) -> float:
    assert callable(predicate)
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def serf_got_event(node: Node, name: str) -> int:
    return node.proc.log_text().count(f"Received event: user-event: {name}")


def our_events(cl: Cluster, node: Node) -> list[dict[str, object]]:
    rc, out, err = cl.agentctl(node, "events", "--recent", "--format", "json")
    assert rc == 0, err
    events: list[dict[str, object]] = json.loads(out)
    return events


def start_line(lab: Lab, cl: Cluster) -> tuple[Node, Node, Node, Node]:
    """serf-0, ours-0, ours-1, serf-1; all four alive everywhere."""
    h = lab.hosts
    s0 = cl.start_serf(h[0], "serf-0")
    cl.wait_ready([s0], timeout=10)
    o0 = cl.start_ours(h[1], "ours-0", join=[s0.bind])
    o1 = cl.start_ours(h[2], "ours-1", join=[s0.bind])
    cl.wait_ready([o0, o1], timeout=30)
    s1 = cl.start_serf(h[3], "serf-1", join=[o0.bind])
    every = [s0, o0, o1, s1]
    cl.wait_for(every, all_alive(n.name for n in every), JOIN_DEADLINE, what="all 4 alive everywhere")
    return s0, o0, o1, s1


def test_events_queries_and_leave_cross_our_agents(lab_cluster: LabCluster) -> None:
    lab, cl = lab_cluster(4)
    s0, o0, o1, s1 = start_line(lab, cl)
    # _serf_ping: an ack from every member, no response (serf's own answer); direct paths
    out = serf_cli(lab, s0.host, "query", "-timeout=3s", "_serf_ping")
    assert re.search(r"Total Acks:\s+4\b", out), out
    assert re.search(r"Total Responses:\s+0\b", out), out

    lab.cut([s0.host], [s1.host])

    # serf -> ours -> serf
    serf_cli(lab, s0.host, "event", "deploy-a", "v1")
    t = wait_until("serf-1 receives serf-0's event", lambda: serf_got_event(s1, "deploy-a") > 0, EVENT_DEADLINE)
    print(f"serf event crossed our agents in {t:.2f} s")
    for o in (o0, o1):
        wait_until(f"{o.name} shows the event",
                   lambda o=o: any(e["name"] == "deploy-a" for e in our_events(cl, o)), EVENT_DEADLINE)
    shown = [e for e in our_events(cl, o0) if e["name"] == "deploy-a"]
    assert len(shown) == 1 and shown[0]["payload_size"] == 2 and shown[0]["coalesce"] is True

    # ours -> both serf agents
    rc, out, err = cl.agentctl(o1, "event", "deploy-b", "xyz", "--coalesce=false")
    assert rc == 0 and "dispatched" in out, err
    for s in (s0, s1):
        wait_until(f"{s.name} receives our event", lambda s=s: serf_got_event(s, "deploy-b") > 0, EVENT_DEADLINE)
    time.sleep(2.0)  # copies still in flight would show as a second "Received event"
    assert serf_got_event(s0, "deploy-b") == 1 and serf_got_event(s1, "deploy-b") == 1
    mine = [e for e in our_events(cl, o1) if e["name"] == "deploy-b"]
    assert len(mine) == 1 and mine[0]["coalesce"] is False

    # relay factor: serf-0 cannot reach ours-1 or serf-1 directly
    # A serf agent picks its relays with kRandomMembers (3·n random draws over all n
    # members, self and non-alive skipped): with 4 members it misses the one relay that
    # still works (ours-0) in (3/4)^12 ≈ 3 % of queries. So up to RELAY_TRIES queries,
    # each an independent draw; our own relays are a sample of all candidates (no miss).
    lab.cut([s0.host], [o1.host])
    outs: list[str] = []
    for i in range(RELAY_TRIES):
        out = serf_cli(lab, s0.host, "query", "-timeout=5s", "-relay-factor=3", f"interop-relay-{i}")
        outs.append(out)
        if {"ours-1", "serf-1"} <= set(re.findall(r"Ack from '([^']+)'", out)):
            break
    else:
        raise AssertionError("\n".join(outs))
    # ...and the other way: our query, serf-0 answering through relays (serf's relayResponse)
    outs = []
    for i in range(RELAY_TRIES):
        rc, out, err = cl.agentctl(o1, "query", "--relay-factor", "3", "--query-timeout", "4",
                                   f"interop-ours-{i}", "--format", "json")
        assert rc == 0, err
        outs.append(out)
        if set(json.loads(out)["acks"]) >= {"serf-0", "ours-0", "serf-1"}:
            break
    else:
        raise AssertionError("\n".join(outs))
    rc, out, err = cl.agentctl(o0, "query", "--node", "serf-1", "--query-timeout", "3", "only-serf-1")
    assert rc == 0 and "Ack from 'serf-1'" in out and "Total Acks: 1" in out, (out, err)
    lab.heal()
    lab.cut([s0.host], [s1.host])

    # serf leave of the far serf agent: left at serf-0, never failed
    serf_cli(lab, s1.host, "leave")
    cl.wait_for([s0, o0, o1], sees_status("serf-1", "left", "failed", "dead"), LEAVE_DEADLINE,
                what="serf-1 gone everywhere")
    time.sleep(1.0)
    views = {n.name: cl.view(n).get("serf-1") for n in (s0, o0, o1)}
    # On a failure, what serf-0 and our agents logged about serf-1 tells whose copy of the
    # intent was missing or late (a rare failure here once, under load, not reproduced).
    about = "\n".join(f"{n.name}: {line}" for n in (s0, o0, o1)
                      for line in n.proc.log_text().splitlines() if "serf-1" in line)
    assert views == {"serf-0": "left", "ours-0": "left", "ours-1": "left"}, f"{views}\n{about[-6000:]}"
    assert "EventMemberFailed: serf-1" not in s0.proc.log_text(), about[-6000:]


def test_force_leave_both_ways(lab_cluster: LabCluster) -> None:
    lab, cl = lab_cluster(4)
    s0, o0, o1, s1 = start_line(lab, cl)
    deadline = detection_deadline(4)

    cl.kill(o1)
    cl.wait_for([s0, s1, o0], sees_status("ours-1", "failed", "dead"), deadline, what="ours-1 failed")
    serf_cli(lab, s0.host, "force-leave", "ours-1")
    cl.wait_for([o0, s1], sees_status("ours-1", "left"), LEAVE_DEADLINE, what="ours-1 left after serf force-leave")

    cl.kill(s1)
    cl.wait_for([s0, o0], sees_status("serf-1", "failed", "dead"), deadline, what="serf-1 failed")
    rc, out, err = cl.agentctl(o0, "force-leave", "serf-1")
    assert rc == 0 and "serf-1: left" in out, (out, err)
    cl.wait_for([s0], sees_status("serf-1", "left"), LEAVE_DEADLINE, what="serf-1 left after agentctl force-leave")
    rc, _, err = cl.agentctl(o0, "force-leave", "nobody")
    assert rc == 1 and "no member named 'nobody'" in err


def _rtt_ms(text: str) -> float:
    m = re.search(r"rtt: ([0-9.]+) ms", text)
    assert m is not None, text
    return float(m.group(1))


def test_network_coordinates_both_ways(lab_cluster: LabCluster) -> None:
    lab, cl = lab_cluster(4)
    s0, o0, _o1, _s1 = start_line(lab, cl)
    serf = serf_binary()
    assert serf is not None

    def serf_rtt(*nodes: str) -> str | None:
        r = lab.run(s0.host, [serf, "rtt", f"-rpc-addr={RPC_ADDR[0]}:{RPC_ADDR[1]}", *nodes],
                    timeout=10, check=False)
        return r.stdout if r.returncode == 0 else None

    def ours_rtt(*nodes: str) -> str | None:
        rc, out, _ = cl.agentctl(o0, "rtt", *nodes)
        return out if rc == 0 else None

    # A probe round of each agent reaches every member within a few probe intervals.
    deadline = 10 * CONFIG.probe_interval * 4
    wait_until("serf rtt ours-0 (serf's cache has our coordinate)", lambda: serf_rtt("ours-0") is not None, deadline)
    wait_until("agentctl rtt serf-0 (our cache has serf's)", lambda: ours_rtt("serf-0") is not None, deadline)
    wait_until("serf rtt between ours-1 and serf-1", lambda: serf_rtt("ours-1", "serf-1") is not None, deadline)
    from_serf = _rtt_ms(serf_rtt("ours-0") or "")
    from_ours = _rtt_ms(ours_rtt("serf-0") or "")
    print(f"serf-0 <-> ours-0: serf estimates {from_serf:.3f} ms, ours {from_ours:.3f} ms")
    assert 0.0 < from_serf < 1000.0 and 0.0 < from_ours < 1000.0
    rc, out, _ = cl.agentctl(o0, "members", "--format", "json")
    rows = {r["name"]: r for r in json.loads(out)}
    coord = rows["serf-0"]["coordinate"]
    assert coord is not None and len(coord["Vec"]) == 8
    rc, _, err = cl.agentctl(o0, "rtt", "nobody")
    assert rc == 1 and "Could not find a coordinate for node 'nobody'" in err
