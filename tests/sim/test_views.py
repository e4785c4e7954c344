"""Incremental view-correctness counters agree with a recount after any sequence of changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.views import Views

N = 6
ops = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.integers(0, N - 1), st.booleans()),
        st.tuples(st.just("stop"), st.integers(0, N - 1), st.booleans()),
        st.tuples(st.just("see"), st.integers(0, N * N - 1), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.booleans())
def test_counters_match_recount(seq: list[tuple[str, int, bool]], converged_start: bool) -> None:
    v = Views(N)
    if converged_start:
        v.start_all_converged()
    v.check()
    for op, x, flag in seq:
        if op == "start":
            v.start(x, knows_all=flag)
        elif op == "stop":
            v.stop(x)
        else:
            v.see(x // N, x % N, int(flag))
        v.check()


def test_crash_then_detection_converges() -> None:
    v = Views(4)
    v.start_all_converged()
    assert v.converged() and v.converged_fraction() == 1.0
    v.stop(3)
    assert v.bad == 3 and v.converged_fraction() == 0.0
    assert v.wrong_fraction() == 3 / (3 * 3)
    for o in range(3):
        v.see(o, 3, 0)
    assert v.converged()


def test_join_needs_everyone_to_learn_the_new_node() -> None:
    v = Views(3)
    v.start(0)
    assert v.converged()
    v.start(1)
    assert v.bad == 2  # 0 does not know 1, 1 does not know 0
    v.see(0, 1, 1)
    v.see(1, 0, 1)
    assert v.converged()
