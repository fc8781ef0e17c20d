"""Declaring bets: on deployment / flag events, on work items, on the command line, in the features
file; precedence; bad declarations dead-lettered with a reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from stream_app import codec, simulate
from stream_app.__main__ import app
from stream_app.codec import Rejected
from stream_app.core.catalog import load_catalog
from stream_app.core.ledger import ExpectedBenefit, parse_features
from stream_app.events.model import Expectation, Release, WorkflowEvent, parse_expectation
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, replay
from tests.unit.test_ledger import BAD, scenario

UP3 = Expectation("conversion", "up", 0.03)


def _deployment(expect: list[dict[str, Any]]) -> bytes:
    doc = orjson.loads(
        codec.encode(Release(id="r1", service="checkout", version="1", time=BAD, kind="deployed"))
    )
    doc["customData"] = {"valueloop": {"expect": expect}}
    return orjson.dumps(doc)


def test_a_signed_change_is_a_direction_and_a_size() -> None:
    assert parse_expectation("conversion", "+3%") == UP3
    assert parse_expectation("latency_p95", "-10%") == Expectation("latency_p95", "down", 0.1)
    assert parse_expectation("orders", 0.02) == Expectation("orders", "up", 0.02)
    for bad in ("3%", "+0%", "lots", "+nan%", None, True, "+2000%"):
        with pytest.raises(ValueError):
            parse_expectation("conversion", bad)


def test_customdata_on_a_deployment_declares_its_bets() -> None:
    ev = codec.decode_any(_deployment([{"kpi": "conversion", "change": "+3%"}]))
    assert isinstance(ev, Release) and ev.expect == (UP3,)
    # Round trip: the encoder writes them back as declared.
    again = codec.decode_any(codec.encode(ev))
    assert isinstance(again, Release) and again.expect == (UP3,)


@pytest.mark.parametrize(
    ("expect", "detail"),
    [
        ([{"kpi": "conversion", "change": "3%"}], "needs a sign"),
        ([{"kpi": "conversion", "change": "a lot"}], "not a signed percentage"),
        ([{"kpi": "", "change": "+3%"}], "kpi"),
        ([{"kpi": "conversion", "change": "+3%"}] * 2, "declared twice"),
    ],
)
def test_a_bad_declaration_is_dead_lettered_with_a_reason(
    expect: list[dict[str, Any]], detail: str
) -> None:
    r = codec.decode_any(_deployment(expect))
    assert isinstance(r, Rejected) and r.reason == "bad-expectation" and detail in r.detail


def test_a_bet_on_a_kpi_the_catalog_does_not_judge_is_refused_by_the_core() -> None:
    p = Pipeline(load_catalog())
    rel = Release(
        "r1", "checkout", "1", BAD, "deployed", expect=(Expectation("conversoin", "up", 0.03),)
    )
    step = p.handle(rel)
    assert step.outcome == "bad-expectation" and step.rejected
    assert p.dora.release_info("r1") is None  # refused before it touched any state


def test_work_item_bets_decode_and_the_cli_sends_them(monkeypatch: pytest.MonkeyPatch) -> None:
    w = WorkflowEvent("w1", BAD, "checkout", "F-1", "feature", "dev", "entered", "active")
    w = WorkflowEvent(**{**{f: getattr(w, f) for f in w.__slots__}, "expect": (UP3,)})
    again = codec.decode_any(codec.encode(w))
    assert isinstance(again, WorkflowEvent) and again.expect == (UP3,)

    sent: list[Any] = []
    monkeypatch.setattr("stream_app.__main__._send", lambda ev, form=None: sent.append(ev))
    args = ["emit", "deployment", "--service", "checkout", "--version", "2"]
    ok = CliRunner().invoke(app, [*args, "--expect", "conversion:+3%", "--expect", "orders:+1%"])
    assert ok.exit_code == 0, ok.output
    assert sent[0].expect == (UP3, Expectation("orders", "up", 0.01))
    bad = CliRunner().invoke(app, [*args, "--expect", "conversion:3%"])
    assert bad.exit_code == 1 and len(sent) == 1  # nothing sent


def test_precedence_event_then_work_item_then_features_file() -> None:
    sc = scenario()
    rel = simulate.releases(sc)[0]
    item = rel.change_ids[0]
    features = parse_features(
        '[[feature]]\nname = "f"\nversion = "1.4.2"\nkpi = "conversion"\n'
        'direction = "up"\nchange = "1%"\n'
        '[[feature]]\nname = "g"\nversion = "1.4.2"\nkpi = "revenue"\n'
        'direction = "up"\nchange = "2%"\n'
    )
    events = list(simulate.generate(sc))
    declared: list[Any] = []
    for ev in events:
        if isinstance(ev, Release) and ev.id == rel.id:
            ev = Release(**{**{f: getattr(ev, f) for f in ev.__slots__}, "expect": (UP3,)})
        elif isinstance(ev, WorkflowEvent) and ev.item_id == item and ev.source_type == "workitem":
            bets = (Expectation("revenue", "up", 0.05), Expectation("orders", "up", 0.04))
            ev = WorkflowEvent(**{**{f: getattr(ev, f) for f in ev.__slots__}, "expect": bets})
        declared.append(ev)
    pipeline = Pipeline(load_catalog(), features=features)
    out = replay(declared, pipeline, ReplayOutcome())
    entry = [e for e in out.ledger if e.release_id == rel.id and e.item_id is None][-1]
    bets = {e.kpi: e for e, _ in entry.expectations}
    assert bets["conversion"] == UP3  # the deployment's own +3 % beats the file's +1 %
    assert bets["revenue"] == ExpectedBenefit("revenue", "up", 0.05)  # the item's beats the file's
    assert bets["orders"] == ExpectedBenefit("orders", "up", 0.04)  # only on the item
    assert entry.outcome == "went-the-other-way"  # conversion fell 10 %
    items = [e for e in out.ledger if e.item_id == item]
    assert items and {e.kpi for e, _ in items[-1].expectations} == {"revenue", "orders"}


def test_bets_survive_the_engine_snapshot() -> None:
    p = Pipeline(load_catalog())
    r = Release("r1", "checkout", "1", BAD, "deployed", expect=(UP3,))
    p.handle(r)
    q = Pipeline(load_catalog())
    q.restore_service("checkout", p.snapshot_service("checkout"))
    assert q.engine.pending_releases("checkout") == [r]


def test_declared_bets_are_part_of_the_service_snapshot() -> None:
    # Bets declared on a release and on a work item are stored with the service's state: a
    # worker that restores the service (after a crash or a rebalance) still knows them.
    p = Pipeline(load_catalog())
    w = WorkflowEvent("w1", BAD, "checkout", "F-1", "feature", "dev", "entered", "active")
    p.handle(WorkflowEvent(**{**{f: getattr(w, f) for f in w.__slots__}, "expect": (UP3,)}))
    down = Expectation("latency_p95", "down", 0.1)
    p.handle(
        Release("r1", "checkout", "1", BAD + 60, "deployed", change_ids=("F-1",), expect=(down,))
    )
    snap = p.snapshot_service("checkout")
    q = Pipeline(load_catalog())
    q.restore_service("checkout", snap)
    assert q.snapshot_service("checkout") == snap
    assert (
        q.item_bets("checkout", ("F-1",)) == p.item_bets("checkout", ("F-1",)) == [("F-1", (UP3,))]
    )
    assert q.ledger_entries("r1") == p.ledger_entries("r1")
    # Forgetting the service forgets its bets.
    q.forget_service("checkout")
    assert q.item_bets("checkout", ("F-1",)) == []
