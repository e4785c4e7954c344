"""The scaling study's fit and tables (sim/study.py)."""

from __future__ import annotations

import math

import pytest

from sim.study import fit_log, fit_table


def test_fit_recovers_a_log_law_and_reports_residuals() -> None:
    data = {n: [1.5 + 0.25 * math.log(n) + e for e in (-0.1, 0.1)] for n in (100, 300, 1000, 3000)}
    data[3000] = [y + 0.4 for y in data[3000]]  # the largest N above the law
    f = fit_log(data)
    assert f is not None
    assert f.b > 0.25 and f.r2 < 1
    assert f.residuals[3000] > 0.1 and f.residuals[1000] < -0.1  # the bend shows in the residuals
    exact = fit_log({n: [2.0 + 0.5 * math.log(n)] for n in (10, 100, 1000)})
    assert exact is not None
    assert exact.a == pytest.approx(2.0) and exact.b == pytest.approx(0.5) and exact.r2 == pytest.approx(1.0)
    assert exact(math.e ** 4) == pytest.approx(4.0)


def test_one_size_cannot_be_fitted() -> None:
    assert fit_log({100: [1.0, 2.0]}) is None
    table = "\n".join(fit_table("t", [("x", {100: [1.0, 2.0]})]))
    assert "| x | 1.50 ± 0.71 | – |" in table
