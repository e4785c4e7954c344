"""The propagation benchmark's stage breakdown (``bench.propagation_stages``): agent log
lines in, milliseconds per stage out. Pure; the benchmark itself needs root and agents."""

from __future__ import annotations

import pytest

from bench.propagation_stages import STAGES, breakdown, parse_marks, summarize

EP = "ab" * 32


def _row(stage: str, ident: str, t: float, detail: str = "") -> str:
    fields = f"stage={stage}" + (f" id={ident}" if ident else "") + (f" detail={detail}" if detail else "")
    return f"ts=2026-12-05T05:00:00.000 level=debug event=row-trace {fields} t={t:.6f}"


def _pass(start: float, apply: float, end: float, ops: int) -> str:
    return (f"ts=2026-12-05T05:00:00.000 level=debug event=pass-trace trigger=poke start={start:.6f} "
            f"apply={apply:.6f} end={end:.6f} ops={ops}")


CREATOR = [
    _row("call", "", 99.0, "net"),  # an earlier create's call: not this one
    "ts=2026-12-05T05:00:00.000 level=info event=endpoint-created id=ab",
    _row("call", "", 100.010, "net"),
    _row("write", EP, 100.011, "net"),
    _row("push", EP, 100.0115, "h0,h2"),
]
OBSERVER = [
    _pass(99.5, 99.51, 99.52, 3),  # before the merge: cannot hold the row
    _row("merge", EP, 100.013, "h1"),
    _pass(100.030, 100.031, 100.040, 0),  # nothing applied: not the one
    _pass(100.064, 100.066, 100.069, 2),
]


def test_a_direct_sample_splits_into_stages_that_sum_to_it() -> None:
    creator, observer = parse_marks(CREATOR), parse_marks(OBSERVER)
    row = breakdown(100.0, 100.070, EP, creator, observer, "h0")
    assert row["direct"] == 1.0
    assert row == pytest.approx({"control": 10.0, "table_write": 1.0, "gossip_wait": 0.5, "receive": 1.5,
                                 "coalesce": 51.0, "plan": 2.0, "netlink": 3.0, "observe": 1.0,
                                 "direct": 1.0})
    total = sum(v for k, v in row.items() if k in STAGES and v is not None)
    assert total == pytest.approx(70.0)


def test_a_relayed_sample_counts_the_relay_as_gossip_wait() -> None:
    creator, observer = parse_marks(CREATOR), parse_marks(OBSERVER)
    row = breakdown(100.0, 100.070, EP, creator, observer, "h3")  # h3 was not pushed to
    assert row["direct"] == 0.0 and row["receive"] is None
    assert row["gossip_wait"] == pytest.approx(2.0)


def test_missing_marks_leave_stages_out_of_the_summary() -> None:
    rows = [breakdown(100.0, 100.070, EP, parse_marks(CREATOR), parse_marks(OBSERVER), "h0"),
            breakdown(100.0, 100.070, "cd" * 32, parse_marks([]), parse_marks([]), "h0")]
    summary = summarize(rows)
    assert summary["samples_complete"] == 1 and summary["samples_direct"] == 1
    assert summary["stages_ms"]["coalesce"]["n"] == 1
    assert summary["stages_ms"]["coalesce"]["p50"] == pytest.approx(51.0)
    assert summarize([])["stages_ms"]["plan"] == {"n": 0}
