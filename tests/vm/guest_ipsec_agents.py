"""Runs inside the test VM (root, Debian's kernel): REAL agent processes program IPsec.

Owns the in-VM scenario behind tests/vm/test_ipsec_agents_vm.py. Three hosts in
namespaces on one underlay bridge (agent.lab.netlab via tests/netns/overlaylab.py), each
running ``python -m agent`` from this checkout's venv with a short key rotation
(``--ipsec-rotation-interval``). Steps, each a named check in ``$OVM_OUT/results.json``:
1. an encrypted network with an endpoint ("container") on every host: pings pass;
2. tcpdump on the underlay sees ESP only (no UDP 4789, no ICMP) while pinging;
3. ``ip xfrm state``/``policy`` on each host: ESP rfc4106 SAs and policies toward both
   peers, all with the agent's reqid;
3b. host1's out policy toward host2 deleted by hand (``ip xfrm policy delete``): host2
   drops the cleartext VXLAN (ping lost, its XfrmInTmplMismatch grows); host1's agent
   restores the policy (repair pass, agent/overlay/ipsec.py RESYNC) and pings pass again;
4. ping at 20/s across >= 3 rotations: 0 lost; several send SPIs seen;
5. host2 removes its endpoint (no longer shares the network): its SAs and policies
   vanish on host0 and host1, which keep theirs toward each other;
6. host1 leaves the cluster (``agentctl leave``): host0 holds no SAs or policies.
Does not: run on the host (needs ESP) or boot the VM (tests/vm/harness.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from agent.lab.netlab import Lab
from tests.netns.overlaylab import OverlayLab, wait_for
from tests.vm.guest_lab import xfrm_stat
from tests.vm.guest_xfrm import Results, pcap_counts

INTERVAL = 5.0
ROTATIONS = 3
RATE = 20
MARKER = "cafebabe0badf00d"
REQID = "0x004f5645"


def xfrm_text(lab: Lab, ns: str, what: str) -> str:
    return lab.run(ns, ["ip", "xfrm", what], check=True).stdout


def peer_addrs(text: str) -> set[str]:
    """Addresses named in 'src A dst B' lines of ip xfrm output."""
    out: set[str] = set()
    for a, b in re.findall(r"src (\S+) dst (\S+)", text):
        out.update(x.split("/")[0] for x in (a, b))
    return out


def poll(check: Callable[[], bool], within: float, every: float = 0.25) -> bool:
    """Like wait_for, but returns False at the deadline so the step records a failed check."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def hand_deleted_policy(res: Results, lab: Lab, ov: OverlayLab, cs: list[str], ips: list[str],
                        addrs: list[str]) -> None:
    """Step 3b: delete host1's out policy toward host2 by hand; host2 must drop the
    cleartext VXLAN that host1 then sends, and host1's agent must put the policy back."""
    ns1, ns2 = ov.nodes[1].host.netns, ov.nodes[2].host.netns
    selector = f"src {addrs[1]}/32 dst {addrs[2]}/32 proto udp dport 4789 dir out".split()
    out_re = re.compile(rf"src {re.escape(addrs[1])}/32 dst {re.escape(addrs[2])}/32.*?dir out", re.S)

    def present() -> bool:
        return bool(out_re.search(xfrm_text(lab, ns1, "policy")))

    def mismatches() -> int:
        return xfrm_stat(ns2).get("XfrmInTmplMismatch", 0)

    # The agent's repair pass (every 5 s, and on every rotation) may put the policy back
    # before our ping leaves; then nothing went out in clear and we simply try again.
    attempts: list[str] = []
    dropped = False
    deleted_at = time.monotonic()
    for _ in range(4):
        if not poll(present, within=45):
            break
        before = mismatches()
        lab.run(ns1, ["ip", "xfrm", "policy", "delete", *selector], check=True)
        deleted_at = time.monotonic()
        answered = ov.ping(cs[1], ips[2], count=1)
        after = mismatches()
        attempts.append(f"ping {'answered' if answered else 'lost'}, h2 XfrmInTmplMismatch {before} -> {after}")
        if after > before:
            dropped = not answered
            break
    res.check("cleartext_vxlan_dropped", dropped,
              f"out policy h1->h2 deleted by hand; attempts: {attempts}")

    restored = poll(present, within=45)
    took = time.monotonic() - deleted_at
    passing = restored and poll(lambda: ov.ping(cs[1], ips[2], count=1), within=45, every=0.5)
    res.check("policy_restored", bool(attempts) and restored and passing,
              f"policy back after {took:.1f}s (deadline 15s): {restored}; pings h1->h2 pass again: {passing}")
    res.info("policy_restore_s", round(took, 1))


def main() -> int:
    res = Results(Path(os.environ["OVM_OUT"]) / "results.json")
    t0 = time.monotonic()
    lab = Lab(3)
    try:
        ov = OverlayLab(lab, profile="local", extra=["--ipsec-rotation-interval", str(INTERVAL)])
        # All at once (the joiners retry until host0 answers): under TCG each Python
        # start costs seconds. Operations go through the control API directly, not
        # agentctl processes, for the same reason.
        for i in range(3):
            ov.start(i, join=[] if i == 0 else [0], wait_ready=False)
        for i in range(3):
            # Three agents import ~50 modules at once on one emulated CPU: ~10-15 s each.
            ov.wait_ready(i, within=150)
        res.info("agents_ready_s", round(time.monotonic() - t0, 1))
        addrs = [n.host.addr for n in ov.nodes]
        net = ov.request(0, "network", {"action": "create", "name": "sec", "subnets": ["10.77.0.0/24"],
                                        "encrypted": True})
        cs = [ov.container(f"s{i}") for i in range(3)]

        def endpoint(i: int) -> dict[str, object] | None:
            try:
                ep: dict[str, object] = ov.request(i, "endpoint", {"action": "create", "network": "sec",
                                                                   "netns": cs[i]})
                return ep
            except Exception as exc:  # the network may not have reached host i yet
                print(f"endpoint on host{i}: {exc}", flush=True)
                return None

        eps = [wait_for(functools.partial(endpoint, i), f"endpoint on host{i}", within=120, every=0.5)
               for i in range(3)]
        ips = [str(e["ipv4"]) for e in eps]
        res.info("network", {"net": net, "ips": ips})

        def all_ping() -> bool:
            return all(ov.ping(cs[i], ips[j], count=1) for i in range(3) for j in range(3) if i != j)

        ok = bool(wait_for(all_ping, "pings between all containers", within=120, every=0.5))
        res.check("encrypted_pings", ok, f"all 6 directed pairs answered after {time.monotonic() - t0:.1f}s")

        cap_path = Path(lab.workdir) / "underlay.pcap"
        cap = ov.capture(0, cap_path, bpf="")
        ov.in_container(cs[0], ["ping", "-c", "10", "-i", "0.1", "-p", MARKER, ips[1]])
        ov.stop_capture(cap)
        c = pcap_counts(cap_path, bytes.fromhex(MARKER))
        res.check("underlay_only_esp", c["esp"] >= 20 and c["udp4789"] == 0 and c["icmp"] == 0
                  and c["marker"] == 0, json.dumps(c))

        problems = []
        for i in range(3):
            st = xfrm_text(lab, ov.nodes[i].host.netns, "state")
            pol = xfrm_text(lab, ov.nodes[i].host.netns, "policy")
            others = {addrs[j] for j in range(3) if j != i}
            if peer_addrs(st) - {"0.0.0.0"} != others | {addrs[i]} or "rfc4106(gcm(aes))" not in st or "esn" not in st:
                problems.append(f"host{i} states: {peer_addrs(st)}")
            if len(re.findall(r"dir out", pol)) != 2 or len(re.findall(r"dir in", pol)) != 2:
                problems.append(f"host{i} policies:\n{pol}")
            if i == 0:
                res.info("host0_xfrm_policy", pol)
                res.info("host0_sa_count", st.count("proto esp"))
        res.check("ip_xfrm", not problems, "; ".join(problems) or "2 peers x (SAs per live epoch, in+out policy)")

        hand_deleted_policy(res, lab, ov, cs, ips, addrs)

        # Rotation under load.
        count = int(RATE * INTERVAL * (ROTATIONS + 0.5))
        spis: set[str] = set()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", cs[0], "ping", "-q", "-i", str(1 / RATE), "-c", str(count), "-W", "2", ips[1]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            pol = xfrm_text(lab, ov.nodes[0].host.netns, "policy")
            m = re.search(rf"src {re.escape(addrs[0])}/32 dst {re.escape(addrs[1])}/32.*?dir out.*?spi (0x[0-9a-f]+)",
                          pol, re.S)
            if m:
                spis.add(m.group(1))
            time.sleep(1.0)
        out = proc.communicate()[0]
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        sent, got = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
        res.check("rotation_zero_loss", sent == count and got == sent and len(spis) >= ROTATIONS,
                  f"{got}/{sent} received at {RATE}/s over {count / RATE:.0f}s; send SPIs seen: {sorted(spis)}")

        # host2 stops sharing the network.
        ov.request(2, "endpoint", {"action": "rm", "ref": eps[2]["id"]})

        def no_host2() -> bool:
            return all(addrs[2] not in peer_addrs(xfrm_text(lab, ov.nodes[i].host.netns, "state") +
                                                  xfrm_text(lab, ov.nodes[i].host.netns, "policy"))
                       for i in (0, 1))

        gone = bool(wait_for(no_host2, "host2's SAs to vanish", within=90, every=0.5))
        kept = addrs[1] in peer_addrs(xfrm_text(lab, ov.nodes[0].host.netns, "state"))
        res.check("no_sas_toward_non_sharing_host", gone and kept and ov.ping(cs[0], ips[1], count=1),
                  "host2 left the network: none of its SAs/policies on host0/host1; host0<->host1 still up")

        ov.request(1, "leave")

        def host0_empty() -> bool:
            ns = ov.nodes[0].host.netns
            return "src" not in xfrm_text(lab, ns, "state") + xfrm_text(lab, ns, "policy")

        res.check("leave_removes_sas", bool(wait_for(host0_empty, "host0's SAs to vanish", within=90, every=0.5)),
                  "host1 left the cluster: host0 holds no SAs and no policies")
        res.info("total_s", round(time.monotonic() - t0, 1))
        return 0
    except BaseException as exc:
        res.check("scenario", False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}")
        for i in range(3):
            with contextlib.suppress(Exception):  # diagnostics only
                print(f"--- host{i} log tail ---\n{ov.log(i)[-1500:]}", flush=True)
        return 1
    finally:
        lab.close()


if __name__ == "__main__":
    raise SystemExit(main())
