"""Value ledger: the features file, and entries through the Pipeline as the worker emits them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream_app import simulate
from stream_app.core.catalog import load_catalog
from stream_app.core.ledger import ExpectedBenefit, Features, load_features, parse_features
from stream_app.errors import ConfigError
from stream_app.events.ledger import LedgerEvent, encode_ledger
from stream_app.metrics import Metrics
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, replay

DAY = 86400.0
START = 1717480800.0  # Tuesday 06:00 UTC
BAD = START - 6 * 3600 + DAY + 10 * 3600

FEATURES = """
[[feature]]
name = "one-page checkout"
service = "checkout"
version = "1.4.2"
kpi = "conversion"
direction = "up"
change = "3%"

[[feature]]
name = "faster search"
flag = "new-ranking"
[[feature.expect]]
kpi = "latency_p95"
direction = "down"
change = 0.1
[[feature.expect]]
kpi = "conversion"
direction = "up"
change = 0.01
"""


def test_features_file_declares_expected_moves_per_release_flag_or_item() -> None:
    f = parse_features(FEATURES)
    bet = ExpectedBenefit("conversion", "up", 0.03)
    assert f.expected_for("checkout", "1.4.2", None, ()) == (bet,)
    assert f.expected_for("search", "1.4.2", None, ()) == ()  # another service's 1.4.2
    assert f.expected_for("search", "new-ranking=on@50%", "new-ranking", ()) == (
        ExpectedBenefit("latency_p95", "down", 0.1),
        ExpectedBenefit("conversion", "up", 0.01),
    )
    items = parse_features(
        '[[feature]]\nname = "x"\nitem = "W-7"\nkpi = "orders"\ndirection = "up"\nchange = 0.02'
    )
    assert items.expected_for("any", "9", None, ("sha1", "W-7")) == (
        ExpectedBenefit("orders", "up", 0.02),
    )
    assert [b.item for b in items.item_bets(("W-7",))] == ["W-7"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "a"\nkpi = "c"\ndirection = "up"\nchange = 0.1', "version, flag or item"),
        ('name = "a"\nversion = "1"', "no expected benefit"),
        (
            'name = "a"\nversion = "1"\nkpi = "c"\ndirection = "sideways"\nchange = 0.1',
            "up or down",
        ),
        ('name = "a"\nversion = "1"\nkpi = "c"\ndirection = "up"\nchange = -0.1', "positive"),
        ('name = "a"\nversion = "1"\nkpi = "c"\ndirection = "up"\nchange = "lots"', "percentage"),
        ('name = "a"\nversoin = "1"', "unknown key"),
    ],
)
def test_bad_features_files_say_what_is_wrong(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_features(f"[[feature]]\n{body}\n", "features.toml")


def test_load_features_reads_a_file_or_gives_none(tmp_path: Path) -> None:
    assert load_features(None) == Features()
    p = tmp_path / "features.toml"
    p.write_text(FEATURES, encoding="utf-8")
    assert len(load_features(p).bets) == 2
    with pytest.raises(ConfigError, match="cannot read"):
        load_features(tmp_path / "missing.toml")


def scenario() -> simulate.Scenario:
    """A day of checkout history, then release 1.4.2, which drops conversion by 10 %."""
    return simulate.Scenario(
        seed=3,
        start=START,
        duration_seconds=BAD + 2 * 3600 - START,
        services=(simulate.service_profile("checkout"),),
        releases=(
            simulate.PlannedRelease("checkout", BAD, "1.4.2", "deployed", {"conversion": -0.10}),
        ),
        workflow=simulate.WorkflowPlan(items_per_release=4, wip_items=1),
        coarse_seconds=900,
    )


def test_a_feature_declared_to_raise_conversion_whose_release_degraded_it_went_the_other_way() -> (
    None
):
    sc = scenario()
    shipped = simulate.releases(sc)[0].change_ids
    assert shipped, "the release ships work items"
    item = shipped[0]
    features = parse_features(
        FEATURES
        + f'\n[[feature]]\nname = "saved carts"\nitem = "{item}"\n'
        + 'kpi = "conversion"\ndirection = "up"\nchange = 0.03\n'
    )
    pipeline = Pipeline(load_catalog(), features=features)
    out = replay(list(simulate.generate(sc)), pipeline, ReplayOutcome())

    rid = sc.release_id(0)
    releases = [e for e in out.ledger if e.release_id == rid and e.item_id is None]
    assert releases, "a final verdict publishes the release's ledger entry"
    entry = releases[-1]  # the latest supersedes earlier ones
    assert entry.outcome == "went-the-other-way" and entry.degraded
    conv = next(k for k in entry.kpis if k.kpi == "conversion")
    assert conv.verdict == "degraded" and conv.change is not None and conv.change < 0
    # Its cost: the active work of the items it shipped, as the flow tracker measured it.
    cost = pipeline.flow.release_cost(rid)
    assert entry.cost == cost and cost.items == len(shipped) and cost.active_seconds > 3600
    assert f"cost {cost.active_seconds / 3600:.1f} h of active work" in entry.summary
    assert "expected conversion +3.0 %: went the other way" in entry.summary
    # The feature declared on one work item gets its own entry, with that item's cost.
    items = [e for e in out.ledger if e.item_id == item]
    assert items and items[-1].outcome == "went-the-other-way" and items[-1].release_id == rid
    assert items[-1].cost == pipeline.flow.item_cost("checkout", item)
    assert 0 < items[-1].cost.active_seconds < cost.active_seconds  # one of the two items

    # As published: the ledger contract, valid against its own model.
    doc = orjson.loads(encode_ledger(entry))
    assert LedgerEvent.model_validate(doc).outcome == "went-the-other-way"
    assert doc["kind"] == "release" and doc["cost"]["active_seconds"] == cost.active_seconds

    # Summarised in metrics: the release counts under its outcome, with its cost.
    m = Metrics(CollectorRegistry())
    m.apply_samples(out.report)
    get = m.registry.get_sample_value
    labels = {"service": "checkout", "outcome": "went-the-other-way"}
    assert get("valueloop_ledger_releases", labels) == 1
    assert get("valueloop_ledger_cost_seconds", labels) == pytest.approx(cost.active_seconds)
    assert get("valueloop_ledger_releases", {"service": "checkout", "outcome": "met"}) == 0


def test_without_a_features_file_entries_are_published_undeclared() -> None:
    sc = scenario()
    out = replay(list(simulate.generate(sc)), Pipeline(load_catalog()), ReplayOutcome())
    entry = [e for e in out.ledger if e.item_id is None][-1]
    assert entry.outcome is None and entry.expectations == () and entry.degraded
    assert ("valueloop_ledger_releases", {"service": "checkout", "outcome": "undeclared"}, 1.0) in (
        out.report
    )
