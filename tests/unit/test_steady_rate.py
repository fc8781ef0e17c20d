"""bench's steady-state rate has a value however fast the pipeline ends (no broker)."""

from __future__ import annotations

import pytest

from bench.runs import _steady_rate


def test_steady_rate_between_the_marks() -> None:
    # 100 events/s from t=1 on, polled every second.
    seen = [(0.0, 0)] + [(1.0 + i, 100 * i) for i in range(11)]
    assert _steady_rate(seen, 1000) == pytest.approx(100.0)


def test_both_marks_between_two_polls_give_that_interval_rate() -> None:
    # A fast run: one poll at the start, the next after everything was committed.
    assert _steady_rate([(0.0, 0), (0.5, 1000)], 1000) == pytest.approx(2000.0)


def test_interpolated_not_rounded_to_polls() -> None:
    # 10 % is crossed half way through the first interval, 90 % half way through the last.
    seen = [(0.0, 0), (1.0, 200), (2.0, 800), (3.0, 1000)]
    t10, t90 = 0.5, 2.5
    assert _steady_rate(seen, 1000) == pytest.approx(800 / (t90 - t10))


def test_no_figure_without_a_bracketing_start() -> None:
    assert _steady_rate([(0.0, 500), (1.0, 1000)], 1000) is None
    assert _steady_rate([(0.0, 0)], 1000) is None
