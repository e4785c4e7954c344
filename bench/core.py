"""Per-message cost of the sans-IO core vs hashicorp/memberlist 0.2.2's own Go code.

``python -m bench core [--quick] [--json FILE] [--streams a,b] [--reps R]``

The same recorded packet streams go to our ``gossip.swim.Swim`` and to memberlist
0.2.2 (Debian's ``golang-github-hashicorp-memberlist-dev`` source, built offline with
Debian's ``golang-go``: bench/go/corebench/). Each stream is written once, by our
encoder, to a file both sides read; a stream is an untimed preload (e.g. the 1,000
members the node already knows) and the timed records. Per record both sides do the
whole receive path: decrypt, CRC, decompress, compound, decode, the state update,
and the reply encoded (and compressed/encrypted) down to the bytes handed to the
socket. Neither side runs its schedulers (no probes or gossip rounds of its own).

Streams (1,000 members unless ``--quick``: 300):

* ``join``: 1,000 new members' alive messages, 8 per compound packet;
* ``probe``: 2,000 pings for us from known members, each answered with an ack
  (which piggybacks the queued news, on both sides);
* ``suspect_dead``: 1,000 suspect then 1,000 dead messages about known members,
  8 per compound packet;
* ``pushpull``: push/pull streams holding the 1,000 members we already know
  (steady-state anti-entropy): read, merge, our 1,001 states encoded back;
* ``join_lzw``, ``probe_lzw``: compression on (LZW packets in, compressed replies out);
* ``probe_aes``, ``pushpull_aes``: gossip encryption on (AES-GCM, one key).

CPU: ours is ``time.process_time`` around the timed records (one thread; the decode
memo is cleared first); Go's is getrusage of its whole process (every goroutine and
the garbage collector) with ``GOMAXPROCS=1``, so neither gets a second core.
Reported per message (the messages inside the packets; a push/pull counts once).
``ratios.core_per_message`` is the worst stream's ours/Go (target <= 5.0);
``ratios.core_per_message_<stream>`` each. The floor: msgpack-decoding every message
body of a stream and nothing else (``floor_us``), in the same interpreter.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from bench.summary import log, write_json
from crypto.keyring import Keyring
from gossip.config import Config
from gossip.effects import Send
from gossip.members import Status
from gossip.swim import Swim
from gossip.wire import codec
from gossip.wire.messagecodec import encode
from gossip.wire.messages import Alive, Dead, NodeState, Ping, PushNodeState, PushPull, Suspect

LOCAL_NAME = "core-0"
LOCAL_ADDR = "10.0.0.1"
PORT = 7946
KEY = bytes(range(16))  # a throw-away gossip key, the same on both sides
PER_PACKET = 8
META = msgpack.packb({"role": "web", "dc": "lab1"})
GO_SOURCE = Path(__file__).with_name("go") / "corebench" / "zz_corebench_test.go"
MEMBERLIST_SRC = Path("/usr/share/gocode/src/github.com/hashicorp/memberlist")
GOPATH_SYSTEM = "/usr/share/gocode"
CACHE = Path("/var/tmp/overlay-agent-corebench")
STREAMS = (
    "join", "probe", "suspect_dead", "pushpull", "join_lzw", "probe_lzw", "probe_aes", "pushpull_aes",
)  # fmt: skip


@dataclass(slots=True)
class Stream:
    name: str
    compress: bool
    key: bytes | None
    records: list[tuple[bytes, tuple[str, int], bytes]] = field(default_factory=list)
    """(kind, source, data): kind b"p"/b"s" preload packet/stream, b"P"/b"S" timed."""
    messages: int = 0
    """Messages in the timed records (a push/pull stream counts as one)."""
    bodies: list[bytes] = field(default_factory=list)
    """The msgpack bodies of the timed messages (for the floor)."""

    def write(self, path: Path) -> None:
        with path.open("wb") as f:
            for kind, (ip, port), data in self.records:
                raw_ip = bytes(int(x) for x in ip.split("."))
                f.write(kind + raw_ip + struct.pack(">HI", port, len(data)) + data)


def _peer(i: int) -> tuple[str, str]:
    return f"node-{i}", f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}"


def _addr(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split("."))


def _keyring(key: bytes | None) -> Keyring | None:
    return Keyring([key], os.urandom) if key is not None else None


def _packets(
    s: Stream, kind: bytes, parts: Sequence[bytes], src: tuple[str, int], per: int
) -> None:
    ring = _keyring(s.key)
    for i in range(0, len(parts), per):
        chunk = parts[i : i + per]
        data = codec.encode_packet(chunk, compress=s.compress, crc=False, keyring=ring)
        s.records.append((kind, src, data))
        if kind == b"P":
            s.messages += len(chunk)
            s.bodies.extend(p[1:] for p in chunk)


def _alive(i: int, incarnation: int = 1) -> bytes:
    name, ip = _peer(i)
    return encode(Alive(incarnation, name, _addr(ip), PORT, META))


def _preload(s: Stream, n: int) -> None:
    _packets(s, b"p", [_alive(i) for i in range(1, n + 1)], (_peer(1)[1], PORT), PER_PACKET)


def build(name: str, n: int) -> Stream:
    base = name.split("_")[0] if name != "suspect_dead" else name
    s = Stream(name, compress=name.endswith("_lzw"), key=KEY if name.endswith("_aes") else None)
    rng = random.Random(17)
    if base == "join":
        src = (_peer(1)[1], PORT)
        _packets(s, b"P", [_alive(i) for i in range(1, n + 1)], src, PER_PACKET)
    elif base == "probe":
        _preload(s, n)
        for seq in range(2 * n):
            i = rng.randrange(1, n + 1)
            _packets(s, b"P", [encode(Ping(seq + 1, LOCAL_NAME))], (_peer(i)[1], PORT), 1)
    elif base == "suspect_dead":
        _preload(s, n)
        src = (_peer(1)[1], PORT)
        order = list(range(2, n + 1))
        rng.shuffle(order)
        suspects = [encode(Suspect(1, _peer(i)[0], _peer(1)[0])) for i in order]
        deads = [encode(Dead(1, _peer(i)[0], _peer(1)[0])) for i in order]
        _packets(s, b"P", suspects + deads, src, PER_PACKET)
    elif base == "pushpull":
        _preload(s, n)
        states = tuple(
            PushNodeState(_peer(i)[0], _addr(_peer(i)[1]), PORT, META, 1, NodeState.ALIVE)
            for i in range(1, n + 1)
        )
        msg = PushPull(False, states)
        data = codec.encode_stream(msg, compress=s.compress, keyring=_keyring(s.key))
        for _ in range(5):
            s.records.append((b"S", (_peer(2)[1], PORT), data))
            s.messages += 1
            s.bodies.append(encode(msg)[1:])
    else:
        raise ValueError(f"unknown stream {name!r}")
    return s


_GONE = (Status.DEAD, Status.LEFT)  # memberlist's NumMembers counts the others

# -- ours ----------------------------------------------------------------------------------------


def run_ours(s: Stream, reps: int) -> list[dict[str, float]]:
    out = []
    config = Config.lan().with_(enable_compression=s.compress)
    for rep in range(reps):
        codec.clear_caches()
        swim = Swim(
            config, LOCAL_NAME, (LOCAL_ADDR, PORT), rng=random.Random(rep), now=1000.0,
            keyring=_keyring(s.key),
        )  # fmt: skip
        now = 1000.0
        sent = sent_bytes = 0
        c0 = w0 = 0.0
        timed = False
        for kind, src, data in s.records:
            if not timed and kind in (b"P", b"S"):
                gc.collect()  # the preload's garbage is not the stream's
                timed = True
                w0, c0 = time.perf_counter(), time.process_time()
            now += 0.001
            if kind in (b"p", b"P"):
                effects = swim.handle_packet(now, src, data)
            else:
                reply, effects = swim.handle_stream(now, src, data)
                if timed and reply is not None:
                    sent_bytes += len(reply)
            if timed:
                for e in effects:
                    if type(e) is Send:
                        sent += 1
                        sent_bytes += len(e.data)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        out.append({"cpu_s": cpu, "wall_s": wall, "sent": sent, "sent_bytes": sent_bytes,
                    "members": sum(1 for m in swim.members() if m.status not in _GONE)})  # fmt: skip
    return out


def floor(s: Stream, reps: int) -> float:
    """Seconds to msgpack-decode the stream's message bodies, best of ``reps``."""
    unpack = msgpack.unpackb
    best = float("inf")
    for _ in range(reps):
        c0 = time.process_time()
        for body in s.bodies:
            if s.name.startswith("pushpull"):
                up = msgpack.Unpacker(raw=True, strict_map_key=False)
                up.feed(body)
                for _obj in up:
                    pass
            else:
                unpack(body, raw=True, strict_map_key=False)
        best = min(best, time.process_time() - c0)
    return best


# -- memberlist (Go) -----------------------------------------------------------------------------


def go_skip_reason() -> str | None:
    if shutil.which("go") is None:
        return "golang-go is not installed (Makefile DEBS)"
    if not (MEMBERLIST_SRC / "memberlist.go").exists():
        return "golang-github-hashicorp-memberlist-dev is not installed (Makefile DEBS)"
    return None


def go_binary() -> Path:
    """memberlist's package + our test file, built once per source version (cached)."""
    version = subprocess.run(["go", "version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(GO_SOURCE.read_bytes() + version.encode())
    for f in sorted(MEMBERLIST_SRC.glob("*.go")):
        digest.update(f.name.encode() + f.read_bytes())
    binary = CACHE / digest.hexdigest()[:16] / "corebench.test"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="corebench-") as tmp:
        pkg = Path(tmp) / "src" / "github.com" / "hashicorp" / "memberlist"
        pkg.mkdir(parents=True)
        for f in MEMBERLIST_SRC.glob("*.go"):
            if not f.name.endswith("_test.go"):  # its own tests need more than we build
                shutil.copy(f, pkg / f.name)
        if (MEMBERLIST_SRC / "vendor").is_dir():
            shutil.copytree(MEMBERLIST_SRC / "vendor", pkg / "vendor", symlinks=True)
        shutil.copy(GO_SOURCE, pkg / GO_SOURCE.name)
        env = dict(os.environ, GO111MODULE="off", GOFLAGS="", GOPATH=f"{tmp}:{GOPATH_SYSTEM}")
        env.setdefault("GOCACHE", str(CACHE / "gocache"))
        log("building memberlist 0.2.2 + bench/go/corebench (once; ~1-2 min) ...")
        r = subprocess.run(
            ["go", "test", "-c", "-o", str(binary) + ".tmp", "."],
            cwd=pkg, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"go build failed:\n{r.stdout}{r.stderr}")
    os.replace(str(binary) + ".tmp", binary)
    return binary


def run_go(binary: Path, s: Stream, reps: int, workdir: Path) -> list[dict[str, float]]:
    path = workdir / f"{s.name}.stream"
    s.write(path)
    env = dict(
        os.environ, GOMAXPROCS="1", CORE_FILE=str(path), CORE_NAME=LOCAL_NAME,
        CORE_ADDR=LOCAL_ADDR, CORE_KEY=s.key.hex() if s.key else "",
        CORE_COMPRESS="1" if s.compress else "0", CORE_REPS=str(reps),
    )  # fmt: skip
    r = subprocess.run(
        [str(binary), "-test.run", "^TestCoreBench$", "-test.count", "1"],
        env=env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or len(rows) != reps:
        raise RuntimeError(
            f"memberlist harness failed ({s.name}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
        )
    return rows


# -- the run -------------------------------------------------------------------------------------


def measure(names: Sequence[str], n: int, reps: int) -> dict[str, Any]:
    binary = go_binary()
    results: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        for name in names:
            s = build(name, n)
            go = run_go(binary, s, reps, Path(tmp))
            ours = run_ours(s, reps)
            fl = floor(s, reps)
            go_cpu = statistics.median(x["cpu_s"] for x in go)
            our_cpu = statistics.median(x["cpu_s"] for x in ours)
            row = {
                "messages": s.messages,
                "records": sum(1 for k, _, _ in s.records if k in (b"P", b"S")),
                "ours_us": round(our_cpu / s.messages * 1e6, 2),
                "go_us": round(go_cpu / s.messages * 1e6, 2),
                "floor_us": round(fl / s.messages * 1e6, 2),
                "ours_cpu_runs_ms": [round(x["cpu_s"] * 1e3, 2) for x in ours],
                "go_cpu_runs_ms": [round(x["cpu_s"] * 1e3, 2) for x in go],
                "ours_sent": ours[0]["sent"],
                "go_sent": go[0]["sent"],
                "ours_sent_bytes": ours[0]["sent_bytes"],
                "go_sent_bytes": go[0]["sent_bytes"],
                "ours_members": ours[0]["members"],
                "go_members": go[0]["members"],
            }
            if row["ours_members"] != row["go_members"]:
                raise RuntimeError(f"{name}: the two sides disagree on the member count: {row}")
            results[name] = row
            ratios[f"core_per_message_{name}"] = round(our_cpu / go_cpu, 2)
            log(
                f"{name:13} {s.messages:5} msgs: ours {row['ours_us']:8.2f} us/msg, "
                f"Go {row['go_us']:7.2f}, ratio {ratios[f'core_per_message_{name}']:5.2f}, "
                f"msgpack floor {row['floor_us']:.2f}"
            )
    worst = max(ratios.values())
    return {
        "benchmark": "core",
        "members": n,
        "reps": reps,
        "streams": results,
        "ratios": {"core_per_message": worst, **ratios},
        "targets": {"core_per_message": 5.0},
    }


def table(report: dict[str, Any]) -> str:
    out = [
        f"core: CPU per message, our sans-IO core vs memberlist 0.2.2 (Go, GOMAXPROCS=1), "
        f"{report['members']} members, median of {report['reps']} reps",
        f"{'stream':14}{'msgs':>7}{'ours us':>10}{'Go us':>9}{'ratio':>8}{'msgpack floor us':>18}",
    ]
    for name, r in report["streams"].items():
        ratio = report["ratios"][f"core_per_message_{name}"]
        out.append(
            f"{name:14}{r['messages']:>7}{r['ours_us']:>10.2f}{r['go_us']:>9.2f}{ratio:>8.2f}{r['floor_us']:>18.2f}"
        )
    out.append(
        f"core_per_message (worst stream) {report['ratios']['core_per_message']} (target <= 5.0)"
    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench core", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 members, 3 reps")
    ap.add_argument("--json", metavar="FILE", help="write raw figures and ratios here")
    ap.add_argument("--streams", help=f"comma-separated subset of {','.join(STREAMS)}")
    ap.add_argument("--members", type=int, help="members per stream (default 1000, quick 300)")
    ap.add_argument("--reps", type=int, help="repetitions per side (default 7, quick 3)")
    args = ap.parse_args(argv)
    names = args.streams.split(",") if args.streams else list(STREAMS)
    unknown = [x for x in names if x not in STREAMS]
    if unknown:
        print(
            f"bench core: unknown stream(s) {', '.join(unknown)}; known: {', '.join(STREAMS)}",
            file=sys.stderr,
        )
        return 2
    n = args.members or (300 if args.quick else 1000)
    if n < 10:
        print("bench core: --members must be at least 10", file=sys.stderr)
        return 2
    reason = go_skip_reason()
    if reason:
        print(f"bench core: cannot run: {reason}", file=sys.stderr)
        return 1
    report = measure(names, n, args.reps or (3 if args.quick else 7))
    report["quick"] = args.quick
    report["command"] = "python -m bench core" + (" --quick" if args.quick else "")
    report["machine"] = {
        "python": platform.python_version(),
        "go": subprocess.run(
            ["go", "version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "cpus": os.cpu_count(),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(table(report))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
