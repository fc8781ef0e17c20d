"""Missing is not zero, counts decide, quantiles from few samples: the judge on pure windows."""

from __future__ import annotations

import numpy as np

from stream_app.core.judge import judge_kpi
from stream_app.core.types import KpiSpec, WindowData

ORDERS = KpiSpec(name="orders", aggregation="sum", stream="orders", critical=True)
P95 = KpiSpec(
    name="latency_p95", aggregation="quantile", stream="latency_ms", quantile=0.95, direction="down"
)


def sums(values: np.ndarray, present: np.ndarray | None = None) -> WindowData:
    """A sum KPI's window: den 1 where the service reported, 0 where it did not (an outage)."""
    present = np.ones(len(values), bool) if present is None else present
    num = tuple(float(v) if p else 0.0 for v, p in zip(values, present, strict=True))
    den = tuple(1.0 if p else 0.0 for p in present)
    counts = tuple(1.0 if p else 0.0 for p in present)
    return WindowData(0.0, 60.0 * len(values), num, den, float(sum(counts)), counts)


def test_a_ten_minute_outage_in_the_post_window_is_missing_data_not_a_drop() -> None:
    rng = np.random.default_rng(1)
    calls = 0
    for _ in range(200):
        base = sums(rng.poisson(1000, 240))
        present = np.ones(60, bool)
        present[20:30] = False  # nothing at all arrived for ten minutes
        j = judge_kpi(ORDERS, base, sums(rng.poisson(1000, 60), present))
        calls += j.verdict in ("degraded", "improved")
        assert j.coverage is not None and abs(j.coverage - 50 / 60) < 1e-9
        assert "83% covered" in j.reason
    assert calls <= 4  # about alpha; read as zeros, every one would be a -17 % drop


def test_no_orders_in_a_quiet_post_window_is_inconclusive_unless_the_counts_decide() -> None:
    rng = np.random.default_rng(2)
    # A small service at night: 0.05 orders a minute, so ~1.5 expected in 30 minutes.
    quiet = judge_kpi(ORDERS, sums(rng.poisson(0.05, 240) + 0.0), sums(np.zeros(30)))
    assert quiet.verdict == "inconclusive", quiet.reason
    # Two orders a minute: 60 expected, none seen is a drop the counts prove.
    busy = judge_kpi(ORDERS, sums(rng.poisson(2.0, 240) + 0.0), sums(np.zeros(30)))
    assert busy.verdict == "degraded", busy.reason
    assert busy.change == -1.0


def quantile_window(rng: np.random.Generator, n: int, per_minute: int, scale: float) -> WindowData:
    """p95 of `per_minute` lognormal latencies per bucket, with the counts behind each."""
    q = [float(np.quantile(scale * rng.lognormal(4.0, 0.5, per_minute), 0.95)) for _ in range(n)]
    counts = (float(per_minute),) * n
    return WindowData(0.0, 60.0 * n, tuple(q), (1.0,) * n, float(per_minute * n), counts)


def test_a_p95_from_a_few_dozen_samples_a_minute_is_not_called_by_chance() -> None:
    rng = np.random.default_rng(3)
    n = 300
    calls = sum(
        judge_kpi(
            P95, quantile_window(rng, 240, 25, 1.0), quantile_window(rng, 30, 25, 1.0)
        ).verdict
        in ("degraded", "improved")
        for _ in range(n)
    )
    assert calls <= 0.02 * n
    # ... while a 30 % slowdown is seen in the same 30 minutes.
    slow = judge_kpi(P95, quantile_window(rng, 240, 25, 1.0), quantile_window(rng, 30, 25, 1.3))
    assert slow.verdict == "degraded"
