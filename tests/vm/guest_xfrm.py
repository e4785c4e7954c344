"""Runs inside the test VM (as root, Debian's kernel): real ESP between 3 hosts.

Owns the in-VM scenario behind tests/vm/test_xfrm_vm.py. Each step records a named
check ({ok, detail}) in ``$OVM_OUT/results.json``; the host-side tests assert them one
by one, so a failure names the step. Steps:
1. the kernel probe finds ESP + GCM; the overlay pings in clear before IPsec;
2. ``KeyAgent`` (crypto/ipsec.py + dataplane/xfrm/) programs SAs and policies; a second
   pass sends nothing (read-back equals desired);
3. pings between all pairs pass, also a full-size DF ping at the encrypted MTU; tcpdump
   on the underlay bridge sees ESP only: no UDP 4789, no ICMP, no payload marker;
4. ``ip xfrm state``/``policy`` show the expected SAs (ESP transport, rfc4106 with a
   128-bit ICV, ESN, replay window 1024) and policies (out pinned to the current SPI);
5. deleting one host's out policy by hand makes its cleartext VXLAN be dropped by the
   receiver (XfrmInTmplMismatch rises); one agent pass restores it;
6. rotation every 2.5 s (clock skew ±0.15 s between hosts, 0.3 s key publication
   delay) while two pings run at 20/s: 0 lost over 3 rotations; old SAs are gone
   after the grace period.
Does not: run on the host (needs ESP); boot the VM (tests/vm/harness.py).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crypto import ipsec
from dataplane.xfrm import codec
from dataplane.xfrm.model import REQID
from dataplane.xfrm.probe import kernel_support_problem
from tests.vm.guest_lab import Board, KeyAgent, Lab, ping_counts, sh, underlay, xfrm_stat

INTERVAL = 2.5
GRACE = 0.8
SKEW = {1: 0.0, 2: 0.15, 3: -0.15}
PUBLISH_DELAY = 0.3
FIRST_EPOCH = 1000
MARKER = "deadbeefcafef00d"
ROTATIONS = 3
RATE = 20  # pings per second during rotation
AEAD_LINE = re.compile(r"aead rfc4106\(gcm\(aes\)\) 0x[0-9a-f]{40}( \(160 bits\))? 128\n")


class Results:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"checks": {}, "info": {}}

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.data["checks"][name] = {"ok": bool(ok), "detail": detail}
        print(f"CHECK {'OK  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        self.save()

    def skip(self, name: str, why: str) -> None:
        self.data["checks"][name] = {"ok": None, "detail": why}
        print(f"CHECK SKIP {name}: {why}", flush=True)
        self.save()

    def info(self, name: str, value: object) -> None:
        self.data["info"][name] = value
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))


class Clock:
    """Virtual time: frozen while the static checks run, then real time from a set point."""

    def __init__(self, at: float) -> None:
        self._base = at
        self._t0: float | None = None

    def freeze(self, at: float) -> None:
        self._base, self._t0 = at, None

    def run_from(self, at: float) -> None:
        self._base, self._t0 = at, time.monotonic()

    def now(self) -> float:
        return self._base + (0.0 if self._t0 is None else time.monotonic() - self._t0)


def pcap_counts(path: Path, marker: bytes) -> dict[str, int]:
    """Classify underlay frames in a classic Ethernet pcap (IPv4 only)."""
    raw = path.read_bytes()
    magic = struct.unpack_from("<I", raw, 0)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    c = {"frames": 0, "esp": 0, "udp4789": 0, "icmp": 0, "marker": 0, "other_ip": 0}
    off = 24
    while off + 16 <= len(raw):
        incl = struct.unpack_from(endian + "I", raw, off + 8)[0]
        frame = raw[off + 16 : off + 16 + incl]
        off += 16 + incl
        c["frames"] += 1
        c["marker"] += marker in frame
        if frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 15) * 4
        proto = frame[23]
        if proto == 50:
            c["esp"] += 1
        elif proto == 17 and struct.unpack_from(">H", frame, 14 + ihl + 2)[0] == 4789:
            c["udp4789"] += 1
        elif proto == 1:
            c["icmp"] += 1
        else:
            c["other_ip"] += 1
    return c


def start_tcpdump(ns: str, dev: str, out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "tcpdump",
            "-n",
            "--immediate-mode",
            "-U",
            "-i",
            dev,
            "-w",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = b""
    while b"listening on" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"tcpdump did not start: {seen.decode(errors='replace')}")
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if ready:
            seen += os.read(proc.stderr.fileno(), 4096)
    return proc


def xfrm_blocks(text: str) -> list[str]:
    """``ip xfrm state``/``policy`` output split into one block per object."""
    blocks: list[str] = []
    for line in text.splitlines():
        if line.startswith("src "):
            blocks.append(line)
        elif blocks:
            blocks[-1] += "\n" + line
    return blocks


def check_ip_xfrm(
    res: Results,
    name: str,
    lab: Lab,
    agents: list[KeyAgent],
    now: float,
    out: Path,
) -> None:
    problems: list[str] = []
    for i, agent in enumerate(agents, start=1):
        states_txt = sh(["ip", "-n", lab.ns(i), "xfrm", "state"])
        pol_txt = sh(["ip", "-n", lab.ns(i), "xfrm", "policy"])
        (out / f"{name}-state-{i}.txt").write_text(
            re.sub(r"0x[0-9a-f]{40}", "<160-bit key>", states_txt)
        )
        (out / f"{name}-policy-{i}.txt").write_text(pol_txt)
        want_states, want_pols, _ = agent.desired(now)
        blocks = xfrm_blocks(states_txt)
        spis = sorted(int(m, 16) for b in blocks for m in re.findall(r"spi (0x[0-9a-f]+)", b))
        if spis != sorted(s.spi for s in want_states):
            problems.append(f"h{i}: SPIs {spis} != {sorted(s.spi for s in want_states)}")
        for b in blocks:
            for needle in (
                "proto esp",
                "mode transport",
                "flag esn",
                "replay_window 1024",
                f"reqid {REQID}",
            ):
                if needle not in b:
                    problems.append(f"h{i}: state lacks {needle!r}: {b.splitlines()[0]}")
            if not AEAD_LINE.search(b):
                problems.append(f"h{i}: state lacks a 160-bit rfc4106 key with ICV 128: {b}")
        pblocks = xfrm_blocks(pol_txt)
        if len(pblocks) != len(want_pols):
            problems.append(f"h{i}: {len(pblocks)} policies, want {len(want_pols)}")
        for pol in want_pols:
            head = f"src {pol.src}/32 dst {pol.dst}/32 proto udp dport 4789"
            match = [b for b in pblocks if b.startswith(head)]
            if len(match) != 1 or f"dir {pol.direction.name.lower()}" not in match[0]:
                problems.append(f"h{i}: no {pol.direction.name} policy {head}")
                continue
            spi = re.search(r"spi (0x[0-9a-f]+)", match[0])
            got = int(spi.group(1), 16) if spi else 0
            if got != pol.spi:
                problems.append(f"h{i}: {pol.direction.name} policy spi {got:#x} != {pol.spi:#x}")
    n = len(agents)
    res.check(
        name,
        not problems,
        "; ".join(problems)
        or f"each of {n} hosts: {2 * 2 * (n - 1)} ESP transport SAs (rfc4106, ICV 128, ESN, "
        f"window 1024) and {2 * (n - 1)} policies (out pinned to the send SPI, in any SPI)",
    )


def main() -> int:
    out = Path(os.environ.get("OVM_OUT", "/tmp"))
    res = Results(out / "results.json")
    t_start = time.monotonic()
    res.info("kernel", os.uname().release)

    problem = kernel_support_problem()
    res.check("kernel_support", problem is None, problem or "ESP + rfc4106(gcm(aes)) available")
    if problem:
        return 1

    mtu = ipsec.encrypted_mtu(1500)
    lab = Lab(3, mtu=mtu)
    lab.build()
    res.info("t_lab_built", round(time.monotonic() - t_start, 1))
    _, got, txt = lab.ping(1, 2, 2, interval=0.2)
    res.check("plain_ping_before_ipsec", got == 2, txt.strip().splitlines()[-2:].__str__())

    policy = ipsec.RotationPolicy(interval=INTERVAL, grace=GRACE)
    clock = Clock(FIRST_EPOCH * INTERVAL + 0.3 * INTERVAL)
    board = Board(delay=PUBLISH_DELAY)
    addrs = [underlay(i) for i in (1, 2, 3)]
    agents = [
        KeyAgent(a, lab.ns(i), board, policy, [p for p in addrs if p != a], skew=SKEW[i])
        for i, a in enumerate(addrs, start=1)
    ]

    try:
        for a in agents:
            a.open()
        for a in agents:
            a.rotate_keys(clock.now())
        clock.freeze(clock.now() + PUBLISH_DELAY + 0.2)  # keys are now visible everywhere
        t0 = time.monotonic()
        first = [len(a.tick(clock.now())) for a in agents]
        res.info("t_program_3_hosts_s", round(time.monotonic() - t0, 3))
        second = [len(a.tick(clock.now())) for a in agents]
        res.check(
            "program_and_read_back",
            all(n > 0 for n in first) and second == [0, 0, 0],
            f"first pass sent {first} requests, second pass {second} (converged)",
        )

        # --- encrypted pings + capture of the underlay
        pcap = out / "underlay.pcap"
        td = start_tcpdump(lab.hub, "br0", pcap) if shutil.which("tcpdump") else None
        pings = [
            subprocess.Popen(lab.ping_argv(i, j, 5, pattern=MARKER), stdout=subprocess.PIPE)
            for i, j in ((1, 2), (2, 3), (3, 1))
        ]
        big = subprocess.Popen(
            lab.ping_argv(1, 3, 2, size=mtu - 28, dont_fragment=True), stdout=subprocess.PIPE
        )
        outs = [p.communicate()[0].decode() for p in pings]
        big_out = big.communicate()[0].decode()
        if td is not None:
            td.send_signal(signal.SIGTERM)
            td.wait(timeout=20)
        counts = [ping_counts(o) for o in outs]
        res.check(
            "encrypted_pings", all(c == (5, 5) for c in counts), f"h1->h2, h2->h3, h3->h1: {counts}"
        )
        res.check(
            "full_size_ping_at_encrypted_mtu",
            ping_counts(big_out) == (2, 2),
            f"overlay MTU {mtu} (encrypted_mtu(1500)); {mtu - 28}-byte DF ping: "
            f"{ping_counts(big_out)}",
        )
        if td is None:
            res.skip("underlay_only_esp", "tcpdump is not installed (Debian package tcpdump)")
        else:
            c = pcap_counts(pcap, bytes.fromhex(MARKER))
            res.info("capture", c)
            res.check(
                "underlay_only_esp",
                c["esp"] >= 34 and c["udp4789"] == 0 and c["icmp"] == 0 and c["marker"] == 0,
                f"tcpdump on the underlay bridge: {c}",
            )

        check_ip_xfrm(res, "ip_xfrm", lab, agents, clock.now(), out)

        # --- a host stops encrypting: the receiver drops its cleartext VXLAN
        before = xfrm_stat(lab.ns(2)).get("XfrmInTmplMismatch", 0)
        selector = "src 192.0.2.1/32 dst 192.0.2.2/32 proto udp dport 4789 dir out"
        sh(["ip", "-n", lab.ns(1), "xfrm", "policy", "delete", *selector.split()])
        _, got, _ = lab.ping(1, 2, 3, interval=0.2, wait=1.0)
        after = xfrm_stat(lab.ns(2)).get("XfrmInTmplMismatch", 0)
        res.check(
            "cleartext_vxlan_dropped",
            got == 0 and after - before >= 3,
            f"out policy h1->h2 deleted: {got}/3 pings answered; h2 XfrmInTmplMismatch "
            f"{before} -> {after}",
        )
        fixed = agents[0].tick(clock.now())
        _, got, _ = lab.ping(1, 2, 2, interval=0.2)
        res.check(
            "policy_restored",
            [r.type for r in fixed] == [codec.XFRM_MSG_UPDPOLICY] and got == 2,
            f"one agent pass sent {[r.what for r in fixed]}; then {got}/2 pings answered",
        )

        # --- rotation under load
        start_epoch = FIRST_EPOCH + 1
        clock.run_from(start_epoch * INTERVAL - 0.6)
        duration = 0.6 + (ROTATIONS - 1) * INTERVAL + GRACE + 0.6
        count = int(duration * RATE)
        deleted_before = [a.deleted_states for a in agents]
        loads = [
            subprocess.Popen(
                lab.ping_argv(i, j, count, interval=1 / RATE, wait=2.0), stdout=subprocess.PIPE
            )
            for i, j in ((1, 2), (3, 1))
        ]
        seen_spis: list[int] = []
        ticks = 0
        while any(p.poll() is None for p in loads):
            for a in agents:
                a.tick(clock.now())
            ticks += 1
            spi = agents[0].last_send.get(underlay(2))
            if spi is not None and (not seen_spis or seen_spis[-1] != spi):
                seen_spis.append(spi)
            time.sleep(0.05)
        results = [ping_counts(p.communicate()[0].decode()) for p in loads]
        last_boundary = (start_epoch + ROTATIONS - 1) * INTERVAL
        while clock.now() < last_boundary + GRACE + 0.4 + max(SKEW.values()):
            for a in agents:
                a.tick(clock.now())
            time.sleep(0.05)
        res.info("rotation_ticks", ticks)
        res.check(
            "rotation_zero_loss",
            all(r[0] == count and r[1] == count for r in results)
            and len(seen_spis) >= ROTATIONS + 1,
            f"{len(seen_spis) - 1} rotations (h1->h2 send SPIs {[hex(s) for s in seen_spis]}); "
            f"pings at {RATE}/s h1->h2, h3->h1 (transmitted, received): {results}",
        )
        # Look only at a settled moment: no epoch boundary or end of grace within 0.4 s of
        # now on any host's (skewed) clock. Right after one, a host's next-epoch SAs wait
        # for a peer whose clock has not reached it yet, which is correct, not a leak.
        def settled(t: float) -> bool:
            return all(ipsec.next_change(t + a.skew - 0.4, policy) > t + a.skew + 0.4 for a in agents)

        while not settled(clock.now()):
            for a in agents:
                a.tick(clock.now())
            time.sleep(0.05)
        clock.freeze(clock.now())  # no further epoch change while we look
        final = clock.now()
        # The state at the frozen time: a boundary may have passed since the last tick. Two
        # passes: after a boundary a host can install the next epoch's SAs only once its
        # peers have published that epoch's keys, which the first pass does in host order.
        for _ in range(2):
            for a in agents:
                a.tick(final)
        problems = []
        for i, a in enumerate(agents, start=1):
            assert a.sock is not None
            keep = ipsec.epochs_to_keep(clock.now() + a.skew, policy)
            tags = sorted({st.state.spi & 3 for st in a.sock.dump_states()})
            want = sorted({e & 3 for e in keep})
            n = len(a.sock.dump_states())
            if tags != want or n != 4 * len(keep) or a.deleted_states <= deleted_before[i - 1]:
                problems.append(f"h{i}: epoch tags {tags} want {want}, {n} SAs")
        res.check(
            "old_sas_removed_after_grace",
            not problems,
            "; ".join(problems) or f"at t={final:.1f}: only SAs of live epochs remain",
        )
        check_ip_xfrm(res, "ip_xfrm_after_rotation", lab, agents, clock.now(), out)
    finally:
        for a in agents:
            a.close()
        res.info("t_guest_total_s", round(time.monotonic() - t_start, 1))
    return 0 if all(c["ok"] is not False for c in res.data["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
