"""``python -m bench ipsec``: cost of programming SAs, and the throughput penalty of ESP.

Figures:
- ``program_100_peers``: derive (X25519 + HKDF + SPIs) and program every SA and policy
  a host needs for 100 peers with 2 live epochs (400 SAs, 200 policies) in one batched
  NETLINK_XFRM exchange, then read them back. Measured natively on this host (derivation,
  and policies only: its kernel has no ESP) and inside the VM (everything, on Debian's
  kernel under TCG emulation, so an upper bound).
- ``throughput``: TCP over the VXLAN overlay between two namespaces in the VM, plain
  and then ESP-encrypted (same VM, same run); ``ratios.throughput_encrypted_vs_plain``
  = encrypted / plain. Under TCG absolute numbers mean nothing; the ratio says how
  much the per-packet crypto costs relative to the rest of the path (AES-NI is
  emulated, so a real CPU loses less).
Uses iperf3 if installed, else a Python socket blast. Convention (bench/__main__.py):
``--quick`` < 60 s, ``--json FILE`` holds raw figures and ``ratios``.
Does not: run without root, or without the VM image for the VM figures
(tests/vm/image.py prepare).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crypto import ipsec
from dataplane.xfrm import codec
from dataplane.xfrm.compile import desired_xfrm
from dataplane.xfrm.kernel import XfrmSocket
from dataplane.xfrm.model import XfrmPolicy, XfrmState
from dataplane.xfrm.probe import kernel_support_problem

PEERS = 100
ME = "10.1.0.1"
REPO = Path(__file__).resolve().parents[1]


def peer_addrs(n: int) -> list[str]:
    return [f"10.1.{(i + 2) // 250}.{(i + 2) % 250 + 1}" for i in range(n)]


def derive_for_peers(n: int) -> tuple[list[XfrmState], list[XfrmPolicy], float]:
    """Everything one host programs for ``n`` peers at one instant, and the seconds it took."""
    policy = ipsec.RotationPolicy(interval=3600, grace=60)
    now = 1000 * 3600 + 100.0
    rnd = random.Random(1)
    epochs = ipsec.epochs_to_publish(now, policy)
    peers = peer_addrs(n)
    mine = {e: ipsec.EpochKey.generate(e, rnd.randbytes) for e in epochs}
    theirs = {
        p: {e: ipsec.EpochKey.generate(e, rnd.randbytes).public for e in epochs} for p in peers
    }
    t0 = time.perf_counter()
    table = ipsec.SpiTable([ME, *peers])
    pairs = [ipsec.pair_sas(ME, mine, p, theirs[p], now, policy, table) for p in peers]
    states, policies = desired_xfrm(ME, pairs)
    return states, policies, time.perf_counter() - t0


def program(netns: str, n: int, with_states: bool) -> dict[str, Any]:
    """Program (and read back) ``n`` peers' objects in the existing namespace ``netns``."""
    states, policies, t_derive = derive_for_peers(n)
    reqs = [codec.add_state(s) for s in states] if with_states else []
    reqs += [codec.add_policy(p, update=True) for p in policies]
    with XfrmSocket.open(netns) as xs:
        t0 = time.perf_counter()
        errors = [e for e in xs.apply(reqs) if e is not None]
        t_apply = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = len(xs.dump_states()) + len(xs.dump_policies())
        t_dump = time.perf_counter() - t0
        # one request per sendmsg, for comparison with batching
        xs.apply([codec.delete_policy(p) for p in policies])
        t0 = time.perf_counter()
        for p in policies:
            xs.request(codec.add_policy(p, update=True))
        t_single = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return {
        "peers": n,
        "sas": len(states) if with_states else 0,
        "policies": len(policies),
        "derive_s": round(t_derive, 4),
        "apply_batched_s": round(t_apply, 4),
        "read_back_s": round(t_dump, 4),
        "objects_read_back": got,
        "policies_one_per_sendmsg_s": round(t_single, 4),
    }


def _scratch_ns(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)


def _drop_ns(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], check=False)


# ------------------------------------------------------------ inside the VM


def _tcp_rate(lab: Any, seconds: float) -> float:
    """Bits per second from host 1 to host 2 over the overlay."""
    from tests.vm.guest_lab import overlay

    if shutil.which("iperf3"):
        srv = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns(2), "iperf3", "-s", "-1", "-B", overlay(2)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(50):  # the server needs a moment under TCG
                out = subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        lab.ns(1),
                        "iperf3",
                        "-J",
                        "-c",
                        overlay(2),
                        "-t",
                        str(seconds),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                result = json.loads(out.stdout or "{}")
                if out.returncode == 0 and "sum_received" in result.get("end", {}):
                    return float(result["end"]["sum_received"]["bits_per_second"])
                print(f"iperf3 attempt failed: {result.get('error', out.stderr)}", flush=True)
                time.sleep(0.2)
            raise RuntimeError(f"iperf3 failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        finally:
            srv.kill()
            srv.wait()
    code = (
        "import socket,sys,time\n"
        "s=socket.create_connection((sys.argv[1],5201));b=bytes(65536);end=time.time()+float(sys.argv[2])\n"
        "while time.time()<end: s.sendall(b)\n"
        "s.close()\n"
    )
    rcv = (
        "import socket,sys,time\n"
        "l=socket.socket();l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        "l.bind((sys.argv[1],5201));l.listen(1);print('ready',flush=True)\n"
        "c,_=l.accept();n=0;t0=time.time()\n"
        "while True:\n d=c.recv(1<<20)\n if not d: break\n n+=len(d)\n"
        "print(n*8/(time.time()-t0))\n"
    )
    r = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns(2), sys.executable, "-c", rcv, overlay(2)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert r.stdout is not None
    r.stdout.readline()
    subprocess.run(
        ["ip", "netns", "exec", lab.ns(1), sys.executable, "-c", code, overlay(2), str(seconds)],
        check=True,
    )
    return float(r.communicate()[0].strip())


def guest_main(out: Path, seconds: float) -> int:
    """The VM part: SA programming on a kernel with ESP, then plain vs encrypted TCP."""
    from tests.vm.guest_lab import Board, KeyAgent, Lab, underlay

    doc: dict[str, Any] = {"kernel": os.uname().release}
    _scratch_ns("bench-sa")
    try:
        doc["program_100_peers"] = program("bench-sa", PEERS, with_states=True)
    finally:
        _drop_ns("bench-sa")
    lab = Lab(2, prefix="bench", mtu=ipsec.encrypted_mtu(1500))
    lab.build()
    doc["tool"] = "iperf3" if shutil.which("iperf3") else "python socket blast"
    doc["plain_bps"] = _tcp_rate(lab, seconds)
    policy = ipsec.RotationPolicy(interval=3600, grace=60)
    board = Board()
    agents = [KeyAgent(underlay(i), lab.ns(i), board, policy, [underlay(3 - i)]) for i in (1, 2)]
    for a in agents:
        a.open()
    try:
        now = 1000 * 3600 + 10.0
        for a in agents:
            a.rotate_keys(now)
        for a in agents:
            a.tick(now)
        doc["encrypted_bps"] = _tcp_rate(lab, seconds)
        with XfrmSocket.open(lab.ns(2)) as xs:
            doc["esp_packets_received"] = sum(
                s.packets for s in xs.dump_states() if s.state.dst == underlay(2)
            )
    finally:
        for a in agents:
            a.close()
    (out / "bench-ipsec.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))
    return 0


# ---------------------------------------------------------------- on the host


def host_main(args: argparse.Namespace) -> int:
    doc: dict[str, Any] = {
        "benchmark": "ipsec",
        "method": __doc__.split("\n\n")[0] if __doc__ else "",
    }
    # native: derivation + policies (this host's kernel may lack ESP)
    problem = kernel_support_problem() if os.geteuid() == 0 else "not root"
    doc["host_kernel_problem"] = problem
    if os.geteuid() == 0 and shutil.which("ip"):
        name = f"bench-xfrm-{os.getpid()}"
        _scratch_ns(name)
        try:
            doc["native"] = program(name, PEERS, with_states=problem is None)
        finally:
            _drop_ns(name)
    else:
        doc["native"] = {"derive_s": round(derive_for_peers(PEERS)[2], 4)}
    print(f"native ({os.uname().release}): {doc['native']}")

    from tests.vm.harness import run_in_vm, skip_reason

    reason = skip_reason()
    if reason or args.no_vm:
        doc["vm"] = {"skipped": reason or "--no-vm"}
        print(f"VM part skipped: {doc['vm']['skipped']}")
    else:
        seconds = 2.0 if args.quick else 5.0
        with tempfile.TemporaryDirectory(prefix="bench-ipsec-") as tmp:
            res = run_in_vm(
                [sys.executable, "-m", "bench.ipsec", "--guest", "--seconds", str(seconds)],
                env={"PYTHONPATH": str(REPO)},
                timeout=240,
                out_dir=Path(tmp),
            )
            try:
                doc["vm"] = json.loads((Path(tmp) / "bench-ipsec.json").read_text())
            except (OSError, ValueError):
                print(res.console[-3000:], file=sys.stderr)
                print("VM part failed (console above)", file=sys.stderr)
                return 1
        doc["vm"]["wall_s"] = round(res.wall, 1)
        vm = doc["vm"]
        doc["ratios"] = {
            "throughput_encrypted_vs_plain": round(vm["encrypted_bps"] / vm["plain_bps"], 3)
        }
        p = vm["program_100_peers"]
        print(
            f"VM ({vm['kernel']}, TCG): 100 peers = {p['sas']} SAs + {p['policies']} policies: "
            f"derive {p['derive_s']} s, program {p['apply_batched_s']} s, "
            f"read back {p['read_back_s']} s"
        )
        print(
            f"VM throughput ({vm['tool']}): plain {vm['plain_bps'] / 1e6:.1f} Mbit/s, "
            f"encrypted {vm['encrypted_bps'] / 1e6:.1f} Mbit/s, "
            f"ratio {doc['ratios']['throughput_encrypted_vs_plain']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench ipsec", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s throughput runs (< 60 s total)")
    ap.add_argument("--json", metavar="FILE", help="write raw figures and ratios here")
    ap.add_argument("--no-vm", action="store_true", help="native figures only")
    ap.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=5.0, help=argparse.SUPPRESS)
    args = ap.parse_args(list(argv))
    if args.guest:
        return guest_main(Path(os.environ.get("OVM_OUT", "/tmp")), args.seconds)
    return host_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
