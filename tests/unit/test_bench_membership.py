"""The membership benchmark's warm-join polling: the same sweep interval for both kinds,
fine where the join takes tens of milliseconds, 100 ms where it takes seconds."""

from __future__ import annotations

import pytest

from bench.membership import warm_poll_interval


@pytest.mark.parametrize(("n", "interval"), [(2, 0.01), (5, 0.01), (20, 0.04), (50, 0.1), (100, 0.1), (250, 0.1)])
def test_warm_join_sweep_interval_grows_with_n_within_bounds(n: int, interval: float) -> None:
    assert warm_poll_interval(n) == pytest.approx(interval)
