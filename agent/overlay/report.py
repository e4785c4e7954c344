"""The overlay's status section, operator warnings and metrics.

Owns (methods of ``agent.overlay.extension.Overlay``, through the ``OverlayReport`` mixin):
``status_section`` (``agentctl status``), ``warnings`` (table conflicts, failed passes,
an unknown underlay MTU, restore notes, kept interfaces) and ``metrics``
(``overlay_*`` families).
Does not: change anything, or report the DNS or IPsec layers (their own sections).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.overlay.base import OverlayBase
from agent.overlay.record import RECORD

if TYPE_CHECKING:
    from agent.runtime import MetricFamily


DEFAULT_UNDERLAY_MTU = 1500


class OverlayReport(OverlayBase):
    """Status, warnings, metrics; mixed into ``Overlay``."""

    def status_section(self) -> dict[str, Any]:
        assert self.tables is not None
        t = self.tables
        local = len(t.local_endpoints())
        section: dict[str, Any] = {
            "overlay": {
                "vtep": self.vtep,
                "dataplane": self.dataplane,
                "device_prefix": self.prefix,
                "underlay_mtu": self.underlay_mtu,
                "underlay_mtu_source": self.underlay_source,
                "networks": len(t.networks()),
                "networks_joined": len(t.sync.joined),
                "endpoints_local": local,
                "endpoints_remote": len(t.endpoints()) - local,
                "conflicts": len(t.conflicts()),
            },
        }
        if self.rec is not None:
            st = self.rec.status()
            section["last_reconcile"] = st["last_reconcile"]
            section["overlay"]["additive_only"] = st["additive_only"]
        elif self.dataplane:  # the reconcilers start with the first network (extension.run)
            section["overlay"]["reconcilers"] = "not started: no network yet"
        return section

    def warnings(self) -> list[str]:
        assert self.tables is not None
        out: list[str] = []
        conflicts = self.tables.conflicts()
        out.extend(c.text for c in conflicts[:3])
        if len(conflicts) > 3:
            out.append(f"... and {len(conflicts) - 3} more table conflicts (agentctl network inspect)")
        if self.rec is not None:
            last = self.rec.status()["last_reconcile"]
            if last["at"] and not last["ok"]:
                first = last["errors"][0] if last["errors"] else "unknown error"
                out.append(f"dataplane: the last reconcile failed ({first}); retrying")
        if self.dataplane and self.underlay_source.startswith("default"):
            out.append(f"underlay MTU unknown, assuming {DEFAULT_UNDERLAY_MTU}: {self.underlay_source}; "
                       "set underlay_mtu")
        out.extend(self._restore_notes)
        if self._record_problem is not None:
            out.append(self._record_problem)
        if self.kept:
            names = sorted(self.kept)
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            out.append(f"{len(names)} endpoint interface(s) without a readable endpoints record are kept "
                       f"as they are, not published: {shown}; restore {RECORD}.json from the copy moved "
                       f"aside and restart, or delete them (ip link del NAME) (docs/operations.md, "
                       f"\"State directory\")")
        return out

    def metrics(self) -> list[MetricFamily]:
        from agent.runtime import MetricFamily

        assert self.tables is not None
        t = self.tables
        local = len(t.local_endpoints())
        fams = [
            MetricFamily.single("overlay_networks", "gauge", "Networks in force", len(t.networks())),
            MetricFamily("overlay_endpoints", "gauge", "Visible endpoints by scope",
                         [({"scope": "local"}, float(local)),
                          ({"scope": "remote"}, float(len(t.endpoints()) - local))]),
            MetricFamily.single("overlay_table_conflicts", "gauge", "Unresolved table conflicts",
                                len(t.conflicts())),
            MetricFamily.single("overlay_table_rows_applied", "counter", "Remote table rows merged",
                                t.stats.rows_applied),
        ]
        if self.rec is not None:
            c = self.rec.counters
            last = self.rec.last
            desired = self.rec.desired
            fams += [
                MetricFamily.single("overlay_dataplane_reconciles", "counter", "Reconcile passes", c.reconciles),
                MetricFamily.single("overlay_dataplane_reconcile_failures", "counter",
                                    "Passes with errors", c.failures),
                MetricFamily.single("overlay_dataplane_last_reconcile_seconds", "gauge",
                                    "Duration of the last pass", last.duration_s),
                MetricFamily("overlay_dataplane_entries", "gauge", "Entries the kernel should hold",
                             [({"table": "fdb"}, float(len(desired.fdb))),
                              ({"table": "flood"}, float(len(desired.flood))),
                              ({"table": "neigh"}, float(len(desired.neigh)))]),
            ]
        return fams
