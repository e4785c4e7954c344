"""Files of a key-rotation run: ``key_rotation.csv`` and ``key_rotation.png``.

Owns: the layout of both, drawn only from ``result.json``'s ``key_rotation``
section (``sim/keyrotation.py`` builds it), in the style of ``sim/plots.py``
(matplotlib optional: without it, only the CSV). Does not own: measuring.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

from sim.plots import DPI, _plt, _title, available


def write_files(out: Path, result: dict[str, Any], *, plots: bool = True) -> list[Path]:
    section = result.get("key_rotation")
    if not isinstance(section, dict):
        return []
    out.mkdir(parents=True, exist_ok=True)
    p = out / "key_rotation.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "step_start", "t_since_step", "fraction_applied"])
        for st in section["steps"]:
            for t, frac in st.get("curve", []):
                w.writerow([st["action"], f"{st['start']:.6g}", f"{t:.6g}", f"{frac:.6g}"])
    paths = [p]
    if plots and available():
        paths.append(_plot(out, result, section))
    return paths


def _plot(out: Path, result: dict[str, Any], section: dict[str, Any]) -> Path:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    colors = {"install": "tab:blue", "use": "tab:green", "remove": "tab:red"}
    for st in section["steps"]:
        if not st.get("ran"):
            continue
        t0 = st["start"]
        curve = st.get("curve", [])
        xs = [t0, *(t0 + t for t, _ in curve)]
        ys = [0.0, *(100 * f for _, f in curve)]
        if st.get("returned") is not None and st["returned"] > xs[-1]:
            xs.append(st["returned"])  # hold the level until the command returned
            ys.append(ys[-1])
        q = st.get("query")
        extra = f", {q['responses']}/{q['members_known'] - 1} answered" if q else ""
        label = f"{st['action']} K{'1' if st['action'] == 'remove' else '2'}: {100 * (st['applied_fraction'] or 0):.0f} %{extra}"
        ax1.step(xs, ys, where="post", color=colors.get(st["action"]), label=label)
        ax1.axvline(t0, linestyle=":", color=colors.get(st["action"]), linewidth=0.8)
        if st.get("returned") is not None:
            ax1.axvline(st["returned"], linestyle="--", color=colors.get(st["action"]), linewidth=0.6)
    ax1.set_ylabel("% of running nodes applied")
    ax1.set_ylim(-2, 102)
    ax1.legend(fontsize=8, loc="center right")
    ax1.set_title("key rotation (dotted: command sent, dashed: query finished)", fontsize=9)
    tl = section.get("timeline", [])
    if tl:
        t = [r[0] for r in tl]
        # Failed decodes within each sampling interval, drawn over that interval.
        dec = [b[1] - a[1] for a, b in itertools.pairwise(tl)]
        step = (t[1] - t[0]) if len(t) > 1 else 1.0
        ax2.bar(t[:-1], dec, width=step * 0.9, align="edge", color="tab:gray", label="undecryptable packets")
        ax2.set_ylabel(f"failed decodes / {step:g} s")
        ax3 = ax2.twinx()
        ax3.plot(t, [r[2] for r in tl], color="tab:orange", label="false suspicion events")
        ax3.plot(t, [r[3] for r in tl], color="tab:red", linestyle="--", label="false death events")
        ax3.set_ylabel("false positives (cumulative)", color="tab:orange")
        h1, l1 = ax2.get_legend_handles_labels()
        h3, l3 = ax3.get_legend_handles_labels()
        ax2.legend(h1 + h3, l1 + l3, fontsize=8, loc="upper left")
    ax2.set_xlabel("simulated time (s)")
    fig.suptitle(_title(result), fontsize=10)
    fig.tight_layout()
    p = out / "key_rotation.png"
    fig.savefig(p, dpi=DPI)
    plt.close(fig)
    return p
