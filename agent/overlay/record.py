"""The overlay's endpoints record: this host's endpoints kept across restarts (state dir).

Owns (methods of ``agent.overlay.extension.Overlay``, through the ``EndpointRecord`` mixin):
the record ``endpoints`` (networks, endpoints, their interface records, kept interfaces,
the Lamport clock), its writes (``_save``: refused before a change that could not be
saved; ``_persist``: best effort after a change that happened anyway; ``_check_writable``),
and the restore at start (``_restore``: the record read back into the tables before the
join, the endpoints' aliases published again, veths checked; orphans deleted only when
the record was read and understood, else kept with a warning, ``_watch_kept``).
Does not: create or remove endpoints (``agent.overlay.endpoints``), write files itself
(the agent's persister), decide what rows mean (``gossip.tables``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

import trio

from agent.control import protocol as api
from agent.log import kv
from agent.overlay.base import OverlayBase
from agent.overlay.veths import PlumbError, host_ifname
from gossip.effects import Effect
from gossip.swim import Swim
from gossip.tables.rows import Endpoint, Network, TableError, endpoint_from_dict, network_from_dict

if TYPE_CHECKING:
    from agent.runtime import Runtime

log = logging.getLogger("agent.overlay.extension")  # the layer's logger, as before the split

RECORD = "endpoints"
"""State-dir record of this host's endpoints."""
RECORD_GROWTH = 4096
"""Room a create needs in the state dir beyond the record's current size."""
KEPT_CHECK_INTERVAL = 10.0
"""How often interfaces kept without a record (``Overlay.kept``) are checked for deletion
by the operator, so their warning goes away."""


class EndpointRecord(OverlayBase):
    """The endpoints record; mixed into ``Overlay``."""

    def _ep_dict(self, e: Endpoint) -> dict[str, Any]:
        """``dataclasses.asdict`` of a local endpoint, computed once per version of it
        (asdict costs ~20 µs a row: the record is rewritten on every create)."""
        cached = self._ep_dicts.get(e.id)
        if cached is None or cached[0] != e:
            cached = (e, dataclasses.asdict(e))
            self._ep_dicts[e.id] = cached
        return cached[1]

    def _record(self, without: str | None = None) -> dict[str, Any]:
        """The endpoints record (without endpoint ``without``: a remove saves first)."""
        assert self.tables is not None
        eps = [e for e in self.tables.local_endpoints() if e.id != without]
        if len(self._ep_dicts) > len(eps):
            live = {e.id for e in eps}
            self._ep_dicts = {k: v for k, v in self._ep_dicts.items() if k in live}
        record: dict[str, Any] = {
            "version": 1,
            "clock": self.tables.clock,
            "networks": [dataclasses.asdict(n) for n in self.tables.local_networks()],
            "endpoints": [self._ep_dict(e) for e in eps],
            # A copy: the write runs in a worker thread while the loop goes on.
            "interfaces": {k: dict(v) for k, v in self.interfaces.items() if k != without},
        }
        if self.kept:
            record["kept_interfaces"] = sorted(self.kept)
        return record

    async def _save(self, without: str | None = None) -> str | None:
        """Write the record; the reason when it could not be written (None: saved, or
        there is no state dir)."""
        assert self.rt is not None
        if self.rt.store is None:
            return None
        if await self.rt.persister.save_json(RECORD, self._record(without)):
            return None
        return self.rt.persister.last_error or "unknown error"

    async def _persist(self) -> None:
        """Best effort: the write of a change that has happened anyway (a withdrawn
        endpoint, an amended interface record); a failure is logged and shown by status."""
        error = await self._save()
        if error is not None:
            log.warning(kv("endpoints-not-persisted", error=error))

    def _check_writable(self, what: str) -> None:
        """ApiError now, before anything changes, when the state dir cannot take the
        record (read-only, full): a change that cannot be saved would be undone by the
        next restart."""
        assert self.rt is not None
        store = self.rt.store
        if store is None:
            return
        try:
            size = os.stat(store.file(RECORD)).st_size
        except OSError:
            size = 0
        problem = store.writable(size + RECORD_GROWTH)
        if problem is not None:
            log.warning(kv("endpoint-refused", reason=problem))
            raise api.ApiError(f"{what}: {problem}; nothing was changed")

    async def _restore(self, rt: Runtime) -> None:
        """Persisted endpoints back into the tables (before the join), veths checked.

        Only a record that was read and understood is trusted to say which of our
        interfaces are orphans (deleted): when it is unreadable (moved aside, see
        ``StateStore.load_json``), malformed or absent, every endpoint interface found is
        kept as it is (``kept``), listed in the record and in a status warning, until the
        operator restores the record or deletes the interfaces (docs/operations.md,
        "State directory")."""
        assert self.tables is not None
        store = rt.store
        record = store.load_json(RECORD) if store is not None else None
        eps: list[Endpoint] = []
        nets: list[Network] = []
        clock = 0
        ifaces: dict[str, dict[str, Any]] = {}
        kept: set[str] = set()
        trusted = record is not None  # an unreadable one is reported by the store (status too)
        if record is not None:
            try:
                if not isinstance(record, dict):
                    raise TableError("not an object")
                eps = [endpoint_from_dict(d) for d in record.get("endpoints") or []]
                nets = [network_from_dict(d) for d in record.get("networks") or []]
                saved = record.get("clock")
                clock = saved if isinstance(saved, int) and not isinstance(saved, bool) else 0
                raw = record.get("interfaces")
                ifaces = {k: v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}
                raw_kept = record.get("kept_interfaces") or []
                kept = {k for k in raw_kept if isinstance(k, str)} if isinstance(raw_kept, list) else set()
            except TableError as exc:
                log.error(kv("endpoints-record-ignored", file=store.file(RECORD) if store else None,
                             reason=str(exc)))
                self._record_problem = (f"state file {store.file(RECORD) if store else RECORD} could not be "
                                        f"used ({exc})")
                eps, nets, trusted = [], [], False
        if self.dataplane and store is not None:
            eps = await self._check_interfaces(eps, kept, trusted)
        if eps:

            def restore(swim: Swim, now: float) -> tuple[str | None, list[Effect]]:
                assert self.tables is not None
                try:
                    effects = list(self.tables.restore_local_endpoints(now, eps, nets, clock))
                except TableError as exc:
                    return str(exc), []
                for e in eps:  # the aliases of each endpoint, published again
                    names = ifaces.get(e.id, {}).get("aliases")
                    if isinstance(names, list) and names:
                        try:
                            effects += self.tables.extras.set_aliases(now, e.id, names)[1]
                        except TableError as exc:
                            log.warning(kv("endpoint-aliases-not-restored", id=e.id[:12], reason=str(exc)))
                return None, effects

            problem = await rt.driver.call(restore)
            if problem is not None:
                log.error(kv("endpoints-not-restored", reason=problem))
                self._record_problem = f"the endpoints in state file {RECORD}.json could not be restored ({problem})"
                self.kept |= {host_ifname(self.prefix, e.id) for e in eps}
                eps = []
        self.interfaces = {e.id: ifaces.get(e.id, {"host_ifname": host_ifname(self.prefix, e.id)}) for e in eps}
        if eps:
            log.info(kv("endpoints-restored", count=len(eps)))
        if record is not None or self.kept:
            await self._persist()


    async def _watch_kept(self) -> None:
        """Forget kept interfaces the operator deleted (their warning goes with them)."""
        while self.kept:
            await trio.sleep(KEPT_CHECK_INTERVAL)
            try:
                present = set(await trio.to_thread.run_sync(self.plumber.existing, self.prefix))
            except PlumbError:
                continue
            async with self._lock:
                gone = self.kept - present
                if gone:
                    self.kept -= gone
                    log.info(kv("kept-interfaces-gone", interfaces=",".join(sorted(gone)), left=len(self.kept)))
                    await self._persist()

    async def _check_interfaces(self, eps: list[Endpoint], kept: set[str], trusted: bool) -> list[Endpoint]:
        """Keep endpoints whose veth still exists. Our veths that no endpoint owns are
        deleted when the record is ``trusted`` (a crash between creating one and saving
        the record), unless the operator has not decided about them yet (``kept``);
        otherwise they are all kept: an unreadable record never deletes interfaces."""
        try:
            present = set(await trio.to_thread.run_sync(self.plumber.existing, self.prefix))
        except PlumbError as exc:
            log.warning(kv("endpoint-interfaces-unknown", reason=str(exc)))
            self.kept = kept
            return eps
        keep = [e for e in eps if host_ifname(self.prefix, e.id) in present]
        for e in eps:
            if e not in keep:
                note = f"endpoint {e.name} ({e.id[:12]}) was not restored: its interface is gone"
                self._restore_notes.append(note)
                log.warning(kv("endpoint-dropped", endpoint=e.id[:12], name=e.name, reason="interface gone"))
        wanted = {host_ifname(self.prefix, e.id) for e in keep}
        unowned = sorted(present - wanted)
        if not trusted:
            self.kept = set(unowned)
            if unowned:
                log.error(kv("endpoint-interfaces-kept", count=len(unowned), interfaces=",".join(unowned[:20]),
                             reason="no readable endpoints record: they are left as they are"))
            return keep
        self.kept = kept & set(unowned)
        for name in unowned:
            if name in self.kept:
                continue
            try:
                await trio.to_thread.run_sync(self.plumber.remove, name)
                log.warning(kv("orphan-interface-removed", ifname=name))
            except PlumbError as exc:
                log.warning(kv("orphan-interface-kept", ifname=name, reason=str(exc)))
        return keep
