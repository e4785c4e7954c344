"""Reports for ``agentctl dataplane``: per network, what the kernel holds vs what it should.

Owns: ``summarize`` (pure: desired + actual -> JSON-ready rows) and ``render_text``
(the human table). Does no I/O; the reconciler supplies the states.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataplane.model import State


def _by_device(table: Mapping[tuple[str, str], object]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for dev, _ in table:
        counts[dev] = counts.get(dev, 0) + 1
    return counts


def _diff_by_device(
    want: Mapping[tuple[str, str], object], have: Mapping[tuple[str, str], object]
) -> tuple[dict[str, int], dict[str, int]]:
    missing: dict[str, int] = {}
    extra: dict[str, int] = {}
    for key, value in want.items():
        if have.get(key) != value:
            missing[key[0]] = missing.get(key[0], 0) + 1
    for key in have:
        if key not in want:
            extra[key[0]] = extra.get(key[0], 0) + 1
    return missing, extra


def summarize(desired: State, actual: State) -> list[dict[str, Any]]:
    """One row per VXLAN device that is desired or present, sorted by VNI."""
    devices = [n for n, lk in desired.links.items() if lk.kind == "vxlan"]
    devices += [
        n for n, lk in actual.links.items() if lk.kind == "vxlan" and n not in desired.links
    ]
    tables = ("fdb", "flood", "neigh")
    counts = {
        (side, t): _by_device(getattr(state, t))
        for side, state in (("desired", desired), ("kernel", actual))
        for t in tables
    }
    diffs = {t: _diff_by_device(getattr(desired, t), getattr(actual, t)) for t in tables}
    rows: list[dict[str, Any]] = []
    for dev in devices:
        want = desired.links.get(dev)
        have = actual.links.get(dev)
        link = want or have
        assert link is not None
        vni = link.vxlan.vni if link.vxlan is not None else None
        bridge = link.master
        want_ports = sorted(p for p, lk in desired.ports.items() if lk.master == bridge)
        have_ports = sorted(p for p, lk in actual.ports.items() if bridge and lk.master == bridge)
        row: dict[str, Any] = {
            "network": desired.networks.get(dev, ""),
            "vni": vni,
            "vxlan": dev,
            "bridge": bridge,
            "mtu": {"desired": want.mtu if want else None, "kernel": have.mtu if have else None},
            "desired": {t: counts[("desired", t)].get(dev, 0) for t in tables},
            "kernel": {t: counts[("kernel", t)].get(dev, 0) for t in tables},
            "missing": {t: diffs[t][0].get(dev, 0) for t in tables},
            "extra": {t: diffs[t][1].get(dev, 0) for t in tables},
            "ports": {"desired": want_ports, "kernel": have_ports},
            "devices_ok": want is not None
            and have is not None
            and have.kind == want.kind
            and have.vxlan == want.vxlan
            and have.mtu == want.mtu
            and have.master == want.master
            and have.up,
        }
        row["in_sync"] = (
            row["devices_ok"]
            and not any(row["missing"].values())
            and not any(row["extra"].values())
            and set(want_ports) <= set(have_ports)
        )
        if want is None:
            row["in_sync"] = False
            row["stale"] = True
        rows.append(row)
    rows.sort(key=lambda r: (r["vni"] is None, r["vni"] or 0, r["vxlan"]))
    return rows


def render_text(report: Mapping[str, Any]) -> str:
    """The table ``agentctl dataplane`` prints (``report`` is ``Reconciler.inspect()``)."""
    head = ("NETWORK", "VNI", "DEVICE", "MTU", "FDB", "FLOOD", "NEIGH", "PORTS", "STATE")
    lines = [head]
    for r in report.get("networks", []):

        def pair(t: str, r: Mapping[str, Any] = r) -> str:
            return f"{r['kernel'][t]}/{r['desired'][t]}"

        state = "in sync" if r["in_sync"] else ("stale" if r.get("stale") else "DIFFERS")
        lines.append(
            (
                r["network"] or "-",
                str(r["vni"]),
                r["vxlan"],
                str(r["mtu"]["kernel"]),
                pair("fdb"),
                pair("flood"),
                pair("neigh"),
                f"{len(r['ports']['kernel'])}/{len(r['ports']['desired'])}",
                state,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    ]
    last = report.get("last_reconcile", {})
    errs = last.get("errors", [])
    out.append("")
    out.append(
        f"last reconcile: {last.get('duration_ms', 0)} ms, {last.get('ops', 0)} ops, "
        f"trigger {last.get('trigger', '-')}, {'ok' if last.get('ok') else f'{len(errs)} error(s)'}"
    )
    out.extend(f"  error: {e}" for e in errs)
    out.extend(f"  ignored input: {p}" for p in report.get("problems", []))
    out.append("(kernel/desired counts)")
    return "\n".join(out)
