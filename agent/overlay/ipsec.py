"""IPsec for encrypted overlay networks in the running agent: epoch keys, publication, XFRM.

Owns (an ``agent.service.Extension`` that sits next to ``agent.overlay.extension.Overlay``):
- this host's per-epoch X25519 keys (``crypto.ipsec.EpochKey``): generated from
  ``os.urandom`` on the rotation schedule, the private halves kept in memory and in a
  key file (mode 0600) in a runtime dir, so an agent restart within an epoch derives
  the very SAs the kernel already holds. The file records the boot id: after a reboot
  (the kernel's SAs are gone, GCM nonces would restart at 1) old keys are discarded;
- publication of the public halves as this node's ``IpsecKeysRow`` in the tables
  (``Tables.publish_ipsec_keys``; no secret ever goes into gossip), from the moment an
  encrypted network exists in the cluster (a membership-only agent makes no keys);
- the source of the XFRM reconciler (``dataplane.reconciler.Reconciler`` over
  ``dataplane.xfrm.target.XfrmTarget``, the same task that runs VXLAN; started once this
  host holds keys, or at boot when the kernel holds XFRM objects an earlier run may have
  left: an agent without encrypted networks never loads the XFRM code): for every peer
  that shares at least one encrypted network with us (and only those),
  ``crypto.ipsec.pair_sas`` for the live epochs, which the target compiles into states
  and policies and syncs in its worker thread. The key schedule pokes it on a table or
  membership change and whenever keys change (``next_change`` of the schedule); it
  resyncs every ``RESYNC`` seconds (repairs objects removed behind our back). Until
  the overlay's view is complete after a start (the VXLAN reconciler's
  ``wait_complete``) passes only add, so a restart never tears down SAs of peers we
  have not heard from yet;
- re-keying an epoch whose outbound SA vanished after it may have sent packets (a
  GCM nonce must never repeat under one key): a fresh key pair for that epoch;
- ``ipsec_peers_view(network_id)``: per peer SPIs, epochs and install times, no keys.
Does not: decide which networks exist or who takes part (``gossip.tables.replica``), probe
the kernel (``dataplane.xfrm.probe``, used by the overlay), pack XFRM messages or
diff the kernel (``dataplane.xfrm``), or program VXLAN/bridges (``dataplane.target``).
References: docs/ipsec.md, crypto/ipsec.py, dataplane/xfrm/.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from agent import limits
from agent.log import kv
from gossip.effects import Effect
from gossip.swim import Swim
from gossip.tables.replica import Tables

if TYPE_CHECKING:
    from agent.control.server import ControlServer
    from agent.overlay.extension import Overlay
    from agent.runtime import MetricFamily, Runtime
    from crypto import ipsec
    from dataplane.reconciler import PassReport, Reconciler, ReconcilerConfig
    from dataplane.xfrm.codec import Request
    from dataplane.xfrm.kernel import XfrmApplier
    from dataplane.xfrm.model import XfrmActual, XfrmDesired, XfrmView
    from dataplane.xfrm.target import XfrmTarget

log = logging.getLogger("agent.overlay.ipsec")

DEFAULT_INTERVAL = 12 * 3600.0
MAX_GRACE = 60.0
POLL = 0.2
"""How often the task compares the tables' change counters (an int comparison)."""
IDLE_POLL = 5.0
"""The same while it holds no keys and no kernel objects (no encrypted network yet): a
table change pokes it at once (``Overlay.change_listeners``), so this only saves wake-ups."""
RESYNC = 5.0
"""Full read-back at least this often while we hold objects (repairs manual deletions)."""
RETRY = 2.0
"""Seconds before a failed pass is retried (no backoff: a few objects, a cheap pass)."""


def reconciler_config() -> ReconcilerConfig:
    """The XFRM reconciler's settings (``dataplane.reconciler`` is loaded with it)."""
    from dataplane.reconciler import ReconcilerConfig

    return ReconcilerConfig(
        resync_interval=RESYNC,
        backoff_initial=RETRY,
        backoff_max=RETRY,
        startup_grace=math.inf,  # deletions wait for the overlay's view (``_follow_overlay``)
        read_back=True,  # install times for ``ipsec_peers_view``, held objects for the target
    )


def _xfrm_leftovers() -> bool:
    from agent.overlay.leftovers import xfrm_objects

    return xfrm_objects()
KEY_FILE = "keys.json"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def rotation_policy(interval: float) -> ipsec.RotationPolicy:
    """The schedule for ``interval``: grace is a third of it, at most a minute (it must
    exceed clock skew plus flight time; a short interval is for tests)."""
    from crypto import ipsec

    return ipsec.RotationPolicy(interval, min(MAX_GRACE, interval / 3))


def default_key_dir(node: str) -> str:
    """A tmpfs dir: it survives agent restarts and is emptied by a reboot, like the
    kernel's SAs (systemd's RuntimeDirectory= when set)."""
    base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or "/run/overlay-agent"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node)
    return os.path.join(base, f"ipsec-{safe}")


def boot_id() -> str:
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


# ------------------------------------------------------------------ key storage


class KeyStore:
    """Private epoch keys on disk: one JSON file, mode 0600, replaced atomically."""

    def __init__(self, directory: str | None, boot: str) -> None:
        self.directory = directory
        self.boot = boot
        self.error: str | None = None

    @property
    def path(self) -> str | None:
        return os.path.join(self.directory, KEY_FILE) if self.directory else None

    def load(self, vtep: str) -> dict[int, ipsec.EpochKey]:
        """Keys saved by an earlier run of this boot for this VTEP; {} otherwise."""
        path = self.path
        if path is None:
            return {}
        try:
            with open(path, "rb") as f:
                data = limits.loads(f.read(limits.KEYRING_FILE_MAX + 1), max_bytes=limits.KEYRING_FILE_MAX,
                                    what="the key file")
            if not isinstance(data, dict) or data.get("boot") != self.boot or data.get("vtep") != vtep:
                return {}
            from crypto import ipsec  # keys were saved: an encrypted network

            out: dict[int, ipsec.EpochKey] = {}
            for epoch, hexkey in dict(data.get("keys") or {}).items():
                key = ipsec.EpochKey.from_private(int(epoch), bytes.fromhex(hexkey))
                out[key.epoch] = key
            return out
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning(kv("ipsec-keys-unreadable", file=path, reason=str(exc)))
            return {}

    def save(self, vtep: str, keys: dict[int, ipsec.EpochKey]) -> bool:
        path = self.path
        if path is None or self.directory is None:
            return True
        data = {"version": 1, "boot": self.boot, "vtep": vtep,
                "keys": {str(e): k.private.hex() for e, k in sorted(keys.items())}}
        tmp = f"{path}.tmp"
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            self.error = f"{path}: {exc.strerror or exc}"
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        self.error = None
        return True


# -------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Peer:
    node: str
    vtep: str
    networks: tuple[str, ...]
    """Encrypted network ids shared with us."""
    publics: dict[int, bytes]
    """The peer's published keys (empty: none yet; traffic to it is dropped)."""


def encrypted_peers(tables: Tables) -> list[Peer]:
    """Peers sharing at least one encrypted network with this node, by node name.

    "Sharing" means both take part in the network (we have a local endpoint, they have
    a live member row): exactly the hosts VXLAN traffic of that network flows between.
    """
    mine = {e.network for e in tables.local_endpoints()}
    shared: dict[tuple[str, str], list[str]] = {}
    for net in tables.networks():
        if net.encrypted and net.id in mine:
            for node, vtep in tables.network_peers(net.id):
                shared.setdefault((node, vtep), []).append(net.id)
    rows = {r.node: r for r in tables.ipsec_rows()}
    out = []
    for (node, vtep), nets in sorted(shared.items()):
        row = rows.get(node)
        publics = row.publics() if row is not None and row.vtep == vtep else {}
        out.append(Peer(node, vtep, tuple(nets), publics))
    return out


def spi_hosts(tables: Tables, me: str) -> list[str]:
    """Every host address with published keys (the SPI table's view; docs/ipsec.md)."""
    return sorted({me, *(r.vtep for r in tables.ipsec_rows() if r.keys)})


# ---------------------------------------------------------------------- state


@dataclass
class PeerState:
    node: str
    vtep: str
    networks: tuple[str, ...]
    epochs: tuple[int, ...]
    send_epoch: int | None
    send_spi: int
    in_spis: dict[int, int]
    out_spis: dict[int, int]


@dataclass
class Counters:
    """Key events; passes, failures and requests are the reconciler's counters."""

    rekeys: int = 0
    rotations: int = 0


# ---------------------------------------------------------------- extension


class IpsecAgent:
    """See the module docstring. ``overlay`` supplies the tables, VTEP and readiness."""

    def __init__(
        self,
        overlay: Overlay,
        *,
        interval: float | None = None,
        key_dir: str | None = None,
        applier_factory: Callable[[], XfrmApplier] | None = None,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = os.urandom,
        boot: str | None = None,
        leftovers: Callable[[], bool] | None = None,
    ) -> None:
        self.overlay = overlay
        self._interval = interval
        self._key_dir = key_dir
        self._applier_factory = applier_factory
        self._xfrm: XfrmTarget | None = None
        self._rec: Reconciler[XfrmView, XfrmDesired, XfrmActual, Request] | None = None
        self._nursery: trio.Nursery | None = None
        self.leftovers: Callable[[], bool] = leftovers or (
            _xfrm_leftovers if applier_factory is None else (lambda: True))
        """Whether the kernel may hold XFRM objects of ours (then the reconciler starts at
        boot): any XFRM state or policy (``agent.overlay.leftovers.xfrm_objects``); with a
        fake kernel (tests) True unless given."""
        self.clock = clock
        self.random_bytes = random_bytes
        self.boot = boot if boot is not None else boot_id()
        self._interval_s = interval or DEFAULT_INTERVAL
        self._policy: ipsec.RotationPolicy | None = None
        self.keys: dict[int, ipsec.EpochKey] = {}
        self.store = KeyStore(None, self.boot)
        self.counters = Counters()
        self.peers: dict[str, PeerState] = {}
        self.installed: dict[tuple[str, int], int] = {}
        self.rt: Runtime | None = None
        self._used: set[tuple[int, str]] = set()
        """(epoch, peer VTEP) whose outbound SA may have sent with the current key."""
        self._restored: set[int] = set()
        self._wake = trio.Event()

    # -- wiring ---------------------------------------------------------------------------------

    @property
    def policy(self) -> ipsec.RotationPolicy:
        """The key schedule (``crypto.ipsec``, loaded with it): made on first use, i.e. with
        the first keys or encrypted network, or when the status is read; an agent that
        never has either does not hold the IPsec key code (~0.13 MiB, docs/performance.md)."""
        if self._policy is None:
            self._policy = rotation_policy(self._interval_s)
        return self._policy

    @property
    def rec(self) -> Reconciler[XfrmView, XfrmDesired, XfrmActual, Request]:
        """The XFRM reconciler, made (and its code loaded) on first use; ``run`` starts it
        once keys exist or the kernel may hold objects of ours."""
        return self._make_reconciler()[0]

    @property
    def xfrm(self) -> XfrmTarget:
        """The reconciler's target (made with it)."""
        return self._make_reconciler()[1]

    def _make_reconciler(self) -> tuple[Reconciler[XfrmView, XfrmDesired, XfrmActual, Request], XfrmTarget]:
        if self._rec is None or self._xfrm is None:
            from dataplane.reconciler import Reconciler
            from dataplane.xfrm.target import XfrmTarget

            # A fake kernel (tests) runs in the trio thread; the real socket in a worker thread.
            factory = self._applier_factory
            self._xfrm = XfrmTarget() if factory is None else XfrmTarget(factory, blocking=False)
            self._rec = Reconciler(self._xfrm, self.source, reconciler_config(), name="ipsec",
                                   after_pass=self._after_pass)
        return self._rec, self._xfrm

    @property
    def tables(self) -> Tables:
        tables = self.overlay.tables
        if tables is None:
            raise RuntimeError("IpsecAgent needs the overlay's tables (Overlay.make_delegate first)")
        return tables

    def setup(self, rt: Runtime, server: ControlServer) -> None:
        self.rt = rt
        interval = self._interval or float(getattr(rt.config, "ipsec_rotation_interval", 0) or DEFAULT_INTERVAL)
        self._interval_s, self._policy = interval, None
        node = rt.config.node
        self.store = KeyStore(self._key_dir or default_key_dir(node), self.boot)
        self.overlay.ipsec_view = self.ipsec_peers_view
        self.overlay.change_listeners.append(self.poke)
        rt.status_sections.append(self.status_section)
        rt.warning_sources.append(self.warnings)
        rt.metric_sources.append(self.metrics)

    def poke(self) -> None:
        self._wake.set()

    async def run(self, rt: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.overlay.dataplane:
            task_status.started()
            return
        await self.restore_keys()
        # Keys first, so the reconciler's first pass already has them.
        await self._rotate_keys(rt, self.clock())
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # At boot only with keys (an encrypted network, or restored ones) or XFRM
            # objects in the kernel (what an earlier run left); else with the first keys.
            if bool(self.keys) or await trio.to_thread.run_sync(self.leftovers):
                await nursery.start(self._run_reconciler)
            task_status.started()
            await self._keep_keys(rt)

    async def _run_reconciler(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rec = self.rec
        async with trio.open_nursery() as nursery:
            await nursery.start(rec.run)
            nursery.start_soon(self._follow_overlay)
            task_status.started()

    async def restore_keys(self) -> None:
        """Keys an earlier run of this boot saved for this VTEP (they may have sent already)."""
        self.keys = await trio.to_thread.run_sync(self.store.load, self.overlay.vtep)
        self._restored = set(self.keys)
        if self.keys:
            log.info(kv("ipsec-keys-restored", epochs=",".join(map(str, sorted(self.keys)))))

    async def _keep_keys(self, rt: Runtime) -> None:
        """The key schedule: rotate at ``next_change``, and poke the reconciler when keys
        changed or the tables moved (a table change wakes this loop at once through
        ``Overlay.change_listeners``; the poll is a safety net)."""
        seen: tuple[int, int] | None = None
        while True:
            # A fresh wake event before reading any state: a poke while this awaits the
            # driver must end the wait below, not be lost with an old event.
            self._wake = trio.Event()
            changed = await self._rotate_keys(rt, self.clock())
            if self._rec is None and self.keys and self._nursery is not None:
                log.info(kv("ipsec-reconciler-started", reason="keys"))
                await self._nursery.start(self._run_reconciler)  # its first pass has them
            key = (self.tables.version, self.tables.ipsec.version)
            if self._rec is not None and (changed or (seen is not None and key != seen)):
                self._rec.poke("keys" if changed else "tables")
            seen = key
            idle = not self.keys and (self._xfrm is None or self._xfrm.held == 0)
            poll = IDLE_POLL if idle else POLL
            if idle and self._policy is None:
                wait = poll  # no keys, no schedule yet: a rotation would change nothing
            else:
                from crypto import ipsec

                wait = min(poll, max(0.0, ipsec.next_change(self.clock(), self.policy) - self.clock()))
            with trio.move_on_after(wait):
                await self._wake.wait()

    async def _follow_overlay(self) -> None:
        """Deletions wait until the overlay's view is complete, like the VXLAN side's
        (``Overlay.view_complete``: also when the VXLAN reconciler has not started, no
        network being there yet)."""
        await self.overlay.view_complete()
        self.rec.ready()

    # -- keys -----------------------------------------------------------------------------------

    async def _rotate_keys(self, rt: Runtime, now: float, rekey: Sequence[int] = ()) -> bool:
        """Hold the keys the schedule wants (fresh ones for ``rekey``), save them, and
        make sure the tables publish exactly their public halves. True if keys changed."""
        if not rekey and not self._keys_needed():
            return False
        from crypto import ipsec

        keep = ipsec.epochs_to_keep(now, self.policy)
        changed = False
        for epoch in ipsec.epochs_to_publish(now, self.policy):
            if epoch not in self.keys or epoch in rekey:
                self.keys[epoch] = ipsec.EpochKey.generate(epoch, self.random_bytes)
                self._restored.discard(epoch)
                self._used = {u for u in self._used if u[0] != epoch}
                changed = True
                if epoch in rekey:
                    self.counters.rekeys += 1
                    log.warning(kv("ipsec-rekey", epoch=epoch, reason="outbound SA vanished"))
                else:
                    self.counters.rotations += 1
        for epoch in [e for e in self.keys if e not in keep]:
            del self.keys[epoch]  # forward secrecy: the private half is gone for good
            self._used = {u for u in self._used if u[0] != epoch}
            changed = True
        if changed and not await trio.to_thread.run_sync(self.store.save, self.overlay.vtep, dict(self.keys)):
            log.warning(kv("ipsec-keys-not-saved", reason=self.store.error))
        want = tuple((e, k.public) for e, k in sorted(self.keys.items()))
        row = self.tables.ipsec.get(self.tables.node)
        if row is not None and row.keys == want and row.vtep == self.tables.vtep:
            return changed

        def publish(swim: Swim, t: float) -> tuple[None, list[Effect]]:
            tables = self.tables
            row = tables.ipsec.get(tables.node)
            if row is None or row.keys != want or row.vtep != tables.vtep:
                return None, tables.publish_ipsec_keys(t, want)
            return None, []

        await rt.driver.call(publish)
        return changed

    def _keys_needed(self) -> bool:
        """Keys are made and published once any encrypted network exists in the cluster
        (or we hold some, e.g. restored after a restart). Every node learns of a network
        when it is created, before anyone can add an endpoint to it, so keys are out in
        time; until then a membership-only agent never loads the X25519 code."""
        return bool(self.keys) or any(n.encrypted for n in self.tables.networks())

    # -- one pass -------------------------------------------------------------------------------

    def desired(self, now: float) -> tuple[list[PeerState], XfrmView]:
        """What the kernel should hold now (called in the trio thread: reads the tables)."""
        from crypto import ipsec
        from dataplane.xfrm.model import XfrmView  # loaded with the reconciler

        tables = self.tables
        me = self.overlay.vtep
        peers = encrypted_peers(tables)
        spis = ipsec.SpiTable(spi_hosts(tables, me))
        pairs: list[ipsec.PairSAs] = []
        states: list[PeerState] = []
        for p in peers:
            try:
                pair = ipsec.pair_sas(me, self.keys, p.vtep, p.publics, now, self.policy, spis)
            except ipsec.IpsecError as exc:  # a bad public key: fail closed for that peer
                log.warning(kv("ipsec-peer-unusable", peer=p.node, reason=str(exc)))
                pair = ipsec.PairSAs(p.vtep, (), (), None)
            pairs.append(pair)
            states.append(PeerState(
                p.node, p.vtep, p.networks, tuple(sa.epoch for sa in pair.outbound),
                pair.send.epoch if pair.send else None, pair.send.spi if pair.send else 0,
                {sa.epoch: sa.spi for sa in pair.inbound}, {sa.epoch: sa.spi for sa in pair.outbound}))
        return states, XfrmView(me, tuple(pairs))

    def source(self) -> XfrmView:
        """The reconciler's source: the SAs to hold now; the peers behind them are kept
        for the views (a pass never overlaps another, so ``_after_pass`` sees these)."""
        peers, view = self.desired(self.clock())
        self.peers = {p.node: p for p in peers}
        return view

    async def _after_pass(self, report: PassReport[XfrmDesired, XfrmActual]) -> None:
        """Install times for the views, and a fresh key for an epoch whose outbound SA
        vanished after it may have sent packets (a GCM nonce must never repeat)."""
        from dataplane.xfrm.model import REQID

        me = self.overlay.vtep
        had = {(s.state.dst, s.state.spi) for s in report.actual.states if s.state.reqid == REQID}
        missing_out = [(s.dst, s.spi) for s in report.desired.states if s.src == me and (s.dst, s.spi) not in had]
        self.installed = {(s.state.dst, s.state.spi): s.add_time for s in report.after.states
                          if s.state.reqid == REQID}
        peers = list(self.peers.values())
        epoch_of = {(p.vtep, spi): e for p in peers for e, spi in p.out_spis.items()}
        rekey = sorted({epoch_of[m] for m in missing_out if m in epoch_of
                        and (epoch_of[m] in self._restored or (epoch_of[m], m[0]) in self._used)})
        self._used |= {(e, p.vtep) for p in peers for e in p.out_spis}
        if not report.additive_only:
            # Restored keys may have sent before the restart: until the view is complete,
            # any outbound SA of theirs that the kernel lacks gets a fresh key instead.
            self._restored.clear()
        if report.ops:
            log.info(kv("ipsec-synced", requests=report.ops, peers=len(peers),
                        additive_only=report.additive_only, errors=len(report.errors)))
        if report.errors:
            reason = "; ".join(report.errors[:3])
            if reason != self.last_error:
                log.warning(kv("ipsec-sync-failed", reason=reason))
            return
        if rekey:
            # The kernel lost an outbound SA that may have sent packets: re-adding its key
            # would repeat GCM nonces, so those epochs get fresh keys (and SAs) instead.
            assert self.rt is not None
            await self._rotate_keys(self.rt, self.clock(), rekey)
            self.rec.poke("rekey")

    @property
    def last_error(self) -> str | None:
        """Why the last pass failed (None: it did not, or none ran)."""
        if self._rec is None:
            return None
        last = self._rec.last
        return None if last.ok else "; ".join(last.errors[:3]) or "unknown error"

    @property
    def last_pass_at(self) -> float | None:
        return self._rec.last.at or None if self._rec is not None else None

    # -- views ----------------------------------------------------------------------------------

    def ipsec_peers_view(self, network_id: str) -> list[dict[str, Any]]:
        """Per peer of an encrypted network: SPIs per epoch, the epoch and SPI in use, and
        when the kernel installed each SA (no key material), by node name."""
        out = []
        for p in sorted(self.peers.values(), key=lambda p: p.node):
            if network_id not in p.networks:
                continue
            sas = []
            for epoch in p.epochs:
                for direction, spi, dst in (("in", p.in_spis.get(epoch), self.overlay.vtep),
                                            ("out", p.out_spis.get(epoch), p.vtep)):
                    if spi is None:
                        continue
                    added = self.installed.get((dst, spi))
                    sas.append({"direction": direction, "epoch": epoch, "spi": f"0x{spi:08x}",
                                "installed_at": added if added else None})
            out.append({"node": p.node, "vtep": p.vtep, "send_epoch": p.send_epoch,
                        "send_spi": f"0x{p.send_spi:08x}", "keys_published": bool(p.epochs),
                        "sas": sas})
        return out

    def status_section(self) -> dict[str, Any]:
        return {"ipsec": {
            "rotation_interval": self.policy.interval,
            "grace": self.policy.grace,
            "epoch": self.policy.epoch_at(self.clock()),
            "epochs_held": sorted(self.keys),
            "peers": len(self.peers),
            "sas_installed": len(self.installed),
            "last_pass_at": self.last_pass_at,
            "last_error": self.last_error,
            "key_file": self.store.path,
        }}

    def warnings(self) -> list[str]:
        out = []
        if self.last_error:
            out.append(f"ipsec: the last XFRM sync failed ({self.last_error}); retrying")
        if self.store.error:
            out.append(f"ipsec: keys not saved ({self.store.error}); a restart re-keys")
        waiting = sorted(p.node for p in self.peers.values() if p.send_epoch is None)
        if waiting:
            out.append(f"ipsec: no usable keys from {', '.join(waiting[:5])} yet: traffic to them is dropped")
        return out

    def metrics(self) -> list[MetricFamily]:
        from agent.runtime import MetricFamily

        c = self._rec.counters if self._rec is not None else None  # no pass yet: zeros
        return [
            MetricFamily.single("overlay_ipsec_passes", "counter", "XFRM sync passes", c.reconciles if c else 0),
            MetricFamily.single("overlay_ipsec_failures", "counter", "XFRM sync passes with errors",
                                c.failures if c else 0),
            MetricFamily.single("overlay_ipsec_requests", "counter", "XFRM requests sent", c.ops_applied if c else 0),
            MetricFamily.single("overlay_ipsec_rekeys", "counter", "Epochs re-keyed after a lost SA",
                                self.counters.rekeys),
            MetricFamily.single("overlay_ipsec_peers", "gauge", "Peers sharing an encrypted network",
                                len(self.peers)),
            MetricFamily.single("overlay_ipsec_sas", "gauge", "SAs of ours in the kernel", len(self.installed)),
        ]
