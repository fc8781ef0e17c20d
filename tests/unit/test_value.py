"""Delivered value in business units, cost and value per hour: hand-computed cases."""

from __future__ import annotations

import orjson
import pytest

from stream_app import simulate
from stream_app.core.catalog import load_catalog
from stream_app.core.dora import KpiOutcome
from stream_app.core.flow import WorkCost
from stream_app.core.ledger import (
    ExpectedBenefit,
    daily_level,
    delivered_value,
    kpi_unit,
    parse_features,
    value_of,
)
from stream_app.events.ledger import LedgerEvent, encode_ledger
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, replay
from tests.unit.test_ledger import scenario


def test_daily_level_is_the_baseline_in_business_units_a_day() -> None:
    # Revenue (sum): 50 a 1-minute bucket -> 50 x 1440 = 72 000 a day.
    assert daily_level("sum", 50.0, 1.0, 60.0) == pytest.approx(72000.0)
    # Conversion (ratio): 4 % of 25 sessions a minute -> 0.04 x 25 x 1440 = 1 440 orders a day.
    assert daily_level("ratio", 0.04, 25.0, 60.0) == pytest.approx(1440.0)
    # Cart value (mean): 30 a cart, 2 carts a 5-minute bucket -> 30 x 2 x 288 = 17 280 a day.
    assert daily_level("mean", 30.0, 2.0, 300.0) == pytest.approx(17280.0)
    assert daily_level("quantile", 120.0, 1.0, 60.0) is None  # latency has no business unit
    assert daily_level("sum", None, 1.0, 60.0) is None
    assert kpi_unit("ratio", None, "orders") == "orders"
    assert kpi_unit("sum", "revenue", None) == "revenue"
    assert kpi_unit("quantile", "latency_ms", None) is None


def test_delivered_value_is_baseline_level_times_change_with_its_interval() -> None:
    conv = KpiOutcome("conversion", "improved", 0.03, True, 1, 0.01, 0.05, 1440.0, "orders")
    d = delivered_value(conv, ExpectedBenefit("conversion", "up", 0.05))
    assert d is not None
    # 1 440 orders a day x +3 % = +43.2 orders a day, interval [14.4, 72]; expected 5 %: 72.
    assert d.per_day == pytest.approx(43.2)
    assert (d.per_day_low, d.per_day_high) == (pytest.approx(14.4), pytest.approx(72.0))
    assert d.expected_per_day == pytest.approx(72.0)
    assert d.unit == "orders"
    down = delivered_value(conv, ExpectedBenefit("conversion", "down", 0.05))
    assert down is not None and down.expected_per_day == pytest.approx(-72.0)
    assert delivered_value(KpiOutcome("latency_p95", "improved", -0.1, False, 1)) is None


def test_cost_and_value_per_engineering_hour() -> None:
    cost = WorkCost(items=2, item_ids=("A", "B"), active_seconds=36000.0, wait_seconds=18000.0)
    kpis = (
        KpiOutcome("conversion", "improved", 0.03, True, 1, 0.01, 0.05, 1440.0, "orders"),
        KpiOutcome("revenue", "neutral", 0.001, True, 1, -0.01, 0.012, 72000.0, "revenue"),
    )
    v = value_of(cost, kpis, (ExpectedBenefit("conversion", "up", 0.03),), cost_per_hour=100.0)
    # 10 h active, 15 h in the flow, 10 h x 100 = 1 000; 43.2 orders/day / 10 h = 4.32.
    assert v.active_hours == pytest.approx(10.0) and v.total_hours == pytest.approx(15.0)
    assert v.cost == pytest.approx(1000.0)
    assert v.headline is not None and v.headline.kpi == "conversion"
    assert v.value_per_hour == pytest.approx(4.32)
    assert [d.kpi for d in v.delivered] == ["conversion", "revenue"]
    # Undeclared: the first KPI that moved; no rate: no money.
    u = value_of(cost, kpis, ())
    assert u.cost is None and u.headline is not None and u.headline.kpi == "conversion"
    # No work: no value per hour.
    assert value_of(WorkCost(), kpis, ()).value_per_hour is None


def test_the_pipeline_values_a_release_from_the_judges_baseline_level() -> None:
    sc = scenario()
    features = parse_features(
        '[[feature]]\nname = "x"\nversion = "1.4.2"\nkpi = "conversion"\n'
        'direction = "up"\nchange = "3%"\n'
    )
    pipeline = Pipeline(load_catalog(), features=features, cost_per_hour=80.0)
    out = replay(list(simulate.generate(sc)), pipeline, ReplayOutcome())
    entry = [e for e in out.ledger if e.item_id is None][-1]
    assert entry.value is not None and entry.value.headline is not None
    h = entry.value.headline
    conv = next(k for k in entry.kpis if k.kpi == "conversion")
    assert conv.change is not None and conv.daily_level is not None
    assert h.kpi == "conversion" and h.unit == "orders"
    assert h.per_day == pytest.approx(conv.daily_level * conv.change)
    assert h.per_day < 0  # conversion fell 10 %: orders lost a day
    assert h.expected_per_day == pytest.approx(conv.daily_level * 0.03)
    assert entry.value.cost == pytest.approx(entry.value.active_hours * 80.0)
    assert "orders/day" in entry.summary
    doc = orjson.loads(encode_ledger(entry))
    ev = LedgerEvent.model_validate(doc)
    assert ev.value is not None and ev.value.headline_kpi == "conversion"
    assert ev.value.delivered[0].per_day == pytest.approx(h.per_day)


def test_a_down_bet_counts_a_fall_as_value() -> None:
    cost = WorkCost(items=1, item_ids=("A",), active_seconds=7200.0)
    errors = KpiOutcome("error_rate", "improved", -0.10, True, 1, -0.15, -0.05, 500.0, "errors")
    v = value_of(cost, (errors,), (ExpectedBenefit("error_rate", "down", 0.05),))
    # 500 errors a day x -10 % = -50 errors a day: a gain of 50 over 2 h = +25 per hour.
    assert v.headline is not None and v.headline.per_day == pytest.approx(-50.0)
    assert v.value_per_hour == pytest.approx(25.0)
