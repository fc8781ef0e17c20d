"""The Value page's model: bets ranked with expected vs delivered, portfolio, work in progress."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream_app import codec, simulate
from stream_app.core.catalog import load_catalog
from stream_app.core.ledger import parse_features
from stream_app.events.model import WorkflowEvent
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, replay
from stream_app.web import routes, views
from stream_app.web.pages import report_html
from tests.unit.test_web_views import finite_json, small_scenario


@pytest.fixture(scope="module")
def fed() -> tuple[Pipeline, str]:
    sc = small_scenario()
    events = list(simulate.generate(sc))
    t_end = max(e.time for e in events)
    items = [e for e in events if isinstance(e, WorkflowEvent) and e.source_type == "workitem"]
    p0 = Pipeline(load_catalog())
    replay(events, p0, ReplayOutcome())
    open_items = sorted(
        {
            e.item_id
            for e in items
            if (st := p0.flow.item_state(e.service, e.item_id, t_end)) is not None and not st[1]
        }
    )
    assert open_items, "the scenario leaves work in progress"
    wip = open_items[0]
    features = parse_features(
        '[[feature]]\nname = "one-page checkout"\nservice = "checkout"\nversion = "1.4.2"\n'
        'kpi = "conversion"\ndirection = "up"\nchange = "3%"\n'
        '[[feature]]\nname = "faster search"\nservice = "search"\nversion = "2.7.0"\n'
        'kpi = "orders"\ndirection = "up"\nchange = "5%"\n'
        f'[[feature]]\nname = "saved carts"\nitem = "{wip}"\n'
        'kpi = "revenue"\ndirection = "up"\nchange = "2%"\n'
    )
    p = Pipeline(load_catalog(), features=features, cost_per_hour=100.0, currency="EUR")
    replay(events, p, ReplayOutcome())
    return p, wip


def test_every_bet_has_expected_vs_delivered_outcome_cost_and_a_rank(
    fed: tuple[Pipeline, str],
) -> None:
    p, _ = fed
    v = views.value_view(p, None, p.report_period_seconds)
    finite_json(v)
    bets = {b["service"] + " " + b["version"]: b for b in v["bets"] if b["kind"] == "release"}
    bad = bets["checkout 1.4.2"]
    assert bad["outcome"] == "went-the-other-way"
    x = bad["expectations"][0]
    assert x["kpi"] == "conversion" and x["expected"] == pytest.approx(0.03)
    assert x["change"] < 0 and x["ci_low"] <= x["change"] <= x["ci_high"]
    # In business units: orders a day, the bet's 3 % of the baseline level, the loss delivered.
    assert x["value"]["unit"] == "orders" and x["value"]["per_day"] < 0
    assert x["value"]["expected_per_day"] == pytest.approx(x["value"]["level_per_day"] * 0.03)
    assert bad["cost"] == pytest.approx(bad["active_hours"] * 100.0) and bad["active_hours"] > 0
    # Conversion through its denominator: its level a day is the orders a day.
    orders = next(k for k in p.dora.final_verdicts(bad["release_id"]) if k.kpi == "orders")
    assert x["value"]["level_per_day"] == pytest.approx(orders.daily_level)
    search = bets["search 2.7.0"]
    assert search["outcome"] == "pending"  # no final verdict yet
    assert [b["rank"] for b in v["bets"]] == list(range(1, len(v["bets"]) + 1))
    # Ranked: bets with a value per engineering hour first, unvalued (pending) after.
    assert bad["rank"] < search["rank"]
    assert v["currency"] == "EUR"


def test_portfolio_and_work_in_progress(fed: tuple[Pipeline, str]) -> None:
    p, wip = fed
    v = views.value_view(p, None, p.report_period_seconds)
    port = v["portfolio"]["checkout"]
    assert port["outcomes"]["went-the-other-way"] >= 1 and port["share_went_the_other_way"] > 0
    assert port["value_per_day"]["orders"] < 0 and port["cost"] > 0
    w = next(w for w in v["wip"] if w["item_id"] == wip)
    assert w["expectations"] == [{"kpi": "revenue", "direction": "up", "expected": 0.02}]
    assert (
        w["stage"]
        and w["active_hours"] >= 0
        and w["cost"] == pytest.approx(w["active_hours"] * 100.0)
    )
    # The Releases page links a release to its bets.
    rel = next(r for r in views.releases_view(p)["services"]["checkout"] if r["version"] == "1.4.2")
    assert rel["bets"] == [{"kpi": "conversion", "expected": pytest.approx(0.03)}]


def test_route_and_report_carry_the_value_page(fed: tuple[Pipeline, str]) -> None:
    p, _ = fed
    r = routes.respond(p, "/ui/value", {})
    assert r.status == 200 and b'data-page="value"' in r.body
    api = routes.respond(p, "/ui/api/value", {})
    assert api.status == 200
    doc: dict[str, Any] = orjson.loads(api.body)
    assert doc["bets"] and doc["portfolio"]
    assert routes.respond(p, "/ui/api/value", {"period": "-1"}).status == 400
    bundle = views.report_bundle(p)
    key = str(int(p.report_period_seconds))
    assert bundle["value"][key]["bets"] == doc["bets"]
    assert "went-the-other-way" in report_html(bundle)
    codec_ok = codec  # the module is used by the shared fixtures
    assert codec_ok
