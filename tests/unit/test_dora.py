"""DORA metrics on a hand-computed event set, incident linking rules, and the value ledger."""

from __future__ import annotations

import itertools
import random

import pytest
from prometheus_client import CollectorRegistry

from stream_app.core.dora import DoraTracker, dora_levels, dora_metric_samples, level_of
from stream_app.core.flow import FlowTracker
from stream_app.core.ledger import (
    ExpectedBenefit,
    item_entry,
    judge_expectation,
    release_entry,
)
from stream_app.core.types import KpiJudgement, Verdict, VerdictRecord
from stream_app.core.valuestream import load_valuestream
from stream_app.events.model import Incident, IncidentAction, Release, ReleaseKind, WorkflowEvent
from stream_app.metrics import Metrics

H = 3600.0
D = 86400.0
T0 = 1_700_000_000.0
SVC = "checkout"
_ids = itertools.count()

Event = Release | Incident | WorkflowEvent | VerdictRecord


def rel(
    rid: str,
    hours: float,
    version: str,
    commits: tuple[str, ...] = (),
    change_ids: tuple[str, ...] = (),
    kind: ReleaseKind = "deployed",
    environment: str = "production",
) -> Release:
    return Release(
        id=rid,
        service=SVC,
        version=version,
        time=T0 + hours * H,
        kind=kind,
        environment=environment,
        commits=commits,
        change_ids=change_ids,
    )


def inc(
    iid: str,
    hours: float,
    action: IncidentAction = "detected",
    deployment_id: str | None = None,
    change_ids: tuple[str, ...] = (),
) -> Incident:
    return Incident(
        id=f"inc-ev-{next(_ids)}",
        incident_id=iid,
        time=T0 + hours * H,
        service=SVC,
        action=action,
        deployment_id=deployment_id,
        change_ids=change_ids,
    )


def change(cid: str, hours: float, sha: str) -> WorkflowEvent:
    return WorkflowEvent(
        id=f"wf-{next(_ids)}",
        time=T0 + hours * H,
        service=SVC,
        item_id=cid,
        item_type="feature",
        stage="dev",
        action="created",
        source_type="change",
        commits=(sha,),
    )


def verdict(
    rid: str,
    kpi: str,
    v: Verdict,
    *,
    critical: bool = True,
    phase: str = "final",
    revision: int = 1,
    change: float | None = None,
) -> VerdictRecord:
    return VerdictRecord(
        release_id=rid,
        service=SVC,
        version=rid,
        release_time=T0,
        kpi=kpi,
        critical=critical,
        phase=phase,  # type: ignore[arg-type]  # tests pass the literal as a plain str
        revision=revision,
        baseline_window=(T0 - H, T0),
        post_window=(T0, T0 + H),
        judgement=KpiJudgement(kpi=kpi, verdict=v, reason="", reason_code="x", change=change),
    )


def scenario() -> list[Event]:
    """Eight production deployments over five days, five of them failed (hand-computed below)."""
    return [
        change("c1", 0, "sha1"),
        change("c2", 1, "sha2"),
        change("c3", 2, "sha3"),
        change("c4", 3, "sha4"),
        change("c5", 4, "sha5"),
        rel("D1", 10, "v1", ("sha1",)),  # lead c1 10 h
        rel("D2", 20, "v2", ("sha2",)),  # lead c2 19 h
        inc("I5", 20.5, deployment_id="D2"),  # explicit link
        rel("RB", 21, "v1", kind="rolledback"),  # rolls D2 back to v1
        inc("I5", 22, "resolved"),  # D2 recovered: incident resolution wins over the rollback
        rel("D3", 30, "v3", ("sha2", "sha3")),  # sha2 already in production: lead c3 28 h only
        inc("I1", 31, deployment_id="D3"),
        inc("I1", 33, "resolved"),  # D3 recovery 3 h
        rel("D4", 40, "v4", ("sha4",), change_ids=("PR-4",)),  # lead c4 37 h
        rel("D5", 44, "v5", ("sha5",)),  # lead c5 40 h
        inc("I2", 45, change_ids=("PR-4",)),  # by change id -> D4, not the later D5
        inc("I2", 48, "resolved"),  # D4 recovery 8 h
        rel("D6", 60, "v6"),  # no linked changes: no lead time
        inc("I3", 70),  # no link: time fallback to D6 (10 h before, within 24 h)
        inc("I3", 72, "resolved"),  # D6 recovery 12 h
        rel("D7", 80, "v7"),
        verdict("D7", "conversion", "degraded", change=-0.031),
        verdict("D7", "conversion", "degraded", revision=2, change=-0.031),  # counted once
        verdict("D7", "orders", "degraded", change=-0.05),
        rel("D8", 90, "v8"),  # next good deployment: D7 recovery 10 h
        verdict("D8", "conversion", "degraded", revision=1),
        verdict("D8", "conversion", "neutral", revision=2),  # revised: D8 did not fail
        verdict("D5", "latency", "degraded", critical=False),  # not critical: no failure
        verdict("D5", "conversion", "degraded", phase="interim"),  # interim: no failure
        inc("I4", 120),  # 30 h after D8: beyond the gap, linked to nothing
        rel("S1", 50, "v9", ("sha9",), environment="staging"),  # not production
        rel("F1", 55, "flag=on@50%", kind="flag"),  # a flag change is not a deployment
    ]


def feed(t: DoraTracker, events: list[Event]) -> None:
    for e in events:
        if isinstance(e, Release):
            t.on_release(e)
        elif isinstance(e, Incident):
            t.on_incident(e)
        elif isinstance(e, WorkflowEvent):
            t.on_workflow(e)
        else:
            t.on_verdict(e)


NOW = T0 + 7 * D
PERIOD = 7 * D


def test_four_dora_metrics_match_hand_computed_values() -> None:
    t = DoraTracker(load_valuestream())
    feed(t, scenario())
    r = t.report(NOW, PERIOD)[SVC]
    assert r.deployments == 8
    assert r.deployment_frequency_per_day == pytest.approx(8 / 7)
    assert r.lead_time is not None and r.changes == 5  # 10, 19, 28, 37, 40 h
    assert r.lead_time.p50 == pytest.approx(28 * H)
    assert r.lead_time.p85 == pytest.approx(38.2 * H)
    assert r.failed_deployments == 5
    assert r.change_failure_rate == pytest.approx(5 / 8)
    assert r.recovery_time is not None  # 2, 3, 8, 10, 12 h
    assert r.recovery_time.p50 == pytest.approx(8 * H)
    assert r.recovery_time.p85 == pytest.approx(10.8 * H)
    assert r.unrecovered == 0


def test_each_failed_deployment_reports_its_causes_once() -> None:
    t = DoraTracker(load_valuestream())
    feed(t, scenario())
    r = t.report(NOW, PERIOD)[SVC]
    causes = {f.deployment_id: f.causes for f in r.failures}
    assert causes == {
        "D2": ("incident", "rollback"),
        "D3": ("incident",),
        "D4": ("incident",),
        "D6": ("incident",),
        "D7": ("degraded-kpi",),
    }
    assert r.failures_by_cause == {"incident": 4, "rollback": 1, "degraded-kpi": 1}
    d7 = next(f for f in r.failures if f.deployment_id == "D7")
    assert d7.degraded_kpis == ("conversion", "orders")
    assert d7.recovered_at == T0 + 90 * H
    d2 = next(f for f in r.failures if f.deployment_id == "D2")
    assert d2.rollback_ids == ("RB",) and d2.recovery_seconds == 2 * H


def test_incidents_link_by_id_then_change_then_time_within_the_gap_only() -> None:
    t = DoraTracker(load_valuestream())
    feed(t, scenario())
    links = {i.incident_id: (i.deployment_id, i.link) for i in t.report(NOW, PERIOD)[SVC].incidents}
    assert links == {
        "I1": ("D3", "explicit"),
        "I2": ("D4", "change"),
        "I3": ("D6", "time"),
        "I4": (None, None),  # DevLake would blame D8, 30 h earlier
        "I5": ("D2", "explicit"),
    }


def test_the_incident_gap_is_configurable() -> None:
    t = DoraTracker(load_valuestream(), incident_link_max_gap_seconds=31 * H)
    feed(t, scenario())
    r = t.report(NOW, PERIOD)[SVC]
    assert {i.incident_id: i.deployment_id for i in r.incidents}["I4"] == "D8"
    assert r.failed_deployments == 6


def test_report_is_as_of_now_and_over_the_period_only() -> None:
    t = DoraTracker(load_valuestream())
    feed(t, scenario())
    r = t.report(T0 + 100 * H, 50 * H)[SVC]  # D6, D7, D8; I4 has not happened yet
    assert r.deployments == 3
    assert r.change_failure_rate == pytest.approx(2 / 3)
    assert r.lead_time is None  # none of them shipped a known change
    assert r.recovery_time is not None and r.recovery_time.count == 2
    # Before I3 is resolved, D6 is a failure without a recovery time.
    r = t.report(T0 + 71 * H, 30 * H)[SVC]
    assert [f.deployment_id for f in r.failures] == ["D6"]
    assert r.unrecovered == 1 and r.recovery_time is None


def test_same_events_in_any_order_give_the_same_report() -> None:
    events = scenario()
    ref = DoraTracker(load_valuestream())
    feed(ref, events)
    for seed in range(3):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        t = DoraTracker(load_valuestream())
        feed(t, shuffled)
        assert t.report(NOW, PERIOD) == ref.report(NOW, PERIOD)


def test_state_round_trips() -> None:
    a = DoraTracker(load_valuestream())
    feed(a, scenario())
    b = DoraTracker(load_valuestream())
    b.restore_state(a.snapshot_state())
    assert b.snapshot_state() == a.snapshot_state()
    assert b.report(NOW, PERIOD) == a.report(NOW, PERIOD)
    with pytest.raises(ValueError, match="version"):
        b.restore_state(b'{"v": 0}')


def test_forgotten_deployments_keep_their_counts() -> None:
    t = DoraTracker(load_valuestream(), retention_seconds=10 * D)
    feed(t, scenario())
    before = t.report(NOW, PERIOD)[SVC]
    later = t.report(T0 + 30 * D, PERIOD)[SVC]
    assert later.deployments == 0 and later.change_failure_rate is None
    assert later.deployments_total == before.deployments_total == 8
    assert later.failures_total_by_cause == before.failures_total_by_cause
    assert later.failures_total_by_cause == {"incident": 4, "rollback": 1, "degraded-kpi": 1}


def test_duplicates_and_non_production_events_are_ignored() -> None:
    t = DoraTracker(load_valuestream())
    assert t.on_release(rel("D1", 1, "v1")) == "deployment"
    assert t.on_release(rel("D1", 1, "v1")) == "duplicate"
    assert t.on_release(rel("S", 1, "v1", environment="staging")) == "not-production"
    e = inc("I", 2)
    assert t.on_incident(e) == "accepted"
    assert t.on_incident(e) == "duplicate"
    assert t.report(T0 + D, D)[SVC].deployments == 1


METRIC_ATTR = {
    "valueloop_deployments_total": "deployments",
    "valueloop_deployment_failures_total": "deployment_failures",
    "valueloop_lead_time_seconds": "lead_time",
    "valueloop_change_failure_ratio": "change_failure",
    "valueloop_recovery_time_seconds": "recovery_time",
    "valueloop_deployment_rework_ratio": "rework",
}


def test_metric_samples_fit_the_exported_metric_set() -> None:
    t = DoraTracker(load_valuestream())
    feed(t, scenario())
    samples = dora_metric_samples(t.report(NOW, PERIOD))
    m = Metrics(CollectorRegistry())
    for name, labels, value in samples:
        metric = getattr(m, METRIC_ATTR[name])
        if name.endswith("_total"):
            metric.labels(**labels).inc(value)
        else:
            metric.labels(**labels).set(value)
    get = m.registry.get_sample_value
    assert {n for n, _, _ in samples} == set(METRIC_ATTR)
    assert get("valueloop_deployments_total", {"service": SVC}) == 8
    assert get("valueloop_deployment_failures_total", {"service": SVC, "cause": "rollback"}) == 1
    assert get("valueloop_change_failure_ratio", {"service": SVC}) == pytest.approx(5 / 8)
    lead = get("valueloop_lead_time_seconds", {"service": SVC, "percentile": "0.5"})
    assert lead == pytest.approx(28 * H)


# ---- value ledger


def shipped_feature() -> tuple[FlowTracker, DoraTracker]:
    """Feature W1 (14 h of active work) shipped by D1, whose conversion fell 3.1 %."""
    d = load_valuestream()
    flow, dora = FlowTracker(d), DoraTracker(d)
    wf = [
        ("W1", 0, "dev", "entered", "workitem", ("sha1",)),
        ("W1", 9, "review", "entered", "workitem", ()),
        ("W1", 13, "review", "left", "workitem", ()),
        ("W1", 30, "qa", "entered", "workitem", ()),  # 17 h waiting
        ("W1", 31, "qa", "finished", "workitem", ()),
    ]  # active: dev 9 h + review 4 h + qa 1 h
    for item, hours, stage, action, source, commits in wf:
        ev = WorkflowEvent(
            id=f"wf-{next(_ids)}",
            time=T0 + hours * H,
            service=SVC,
            item_id=item,
            item_type="feature",
            stage=stage,
            action=action,  # type: ignore[arg-type]
            source_type=source,
            commits=commits,
        )
        flow.on_workflow(ev)
        dora.on_workflow(ev)
    d1 = rel("D1", 32, "1.4.0", ("sha1",))
    flow.on_release(d1)
    dora.on_release(d1)
    dora.on_verdict(verdict("D1", "conversion", "degraded", change=-0.031))
    dora.on_verdict(verdict("D1", "orders", "neutral", critical=False, change=0.004))
    return flow, dora


def test_a_feature_meant_to_raise_conversion_that_degraded_it_went_the_other_way() -> None:
    flow, dora = shipped_feature()
    bet = (ExpectedBenefit("conversion", "up", 0.03),)
    entry = item_entry(SVC, "W1", flow, dora, bet)
    assert entry is not None
    assert entry.outcome == "went-the-other-way" and entry.degraded
    assert entry.release_id == "D1"
    assert entry.cost.active_seconds == pytest.approx(14 * H)
    assert entry.cost.flow_seconds == pytest.approx(32 * H)
    assert "cost 14.0 h of active work" in entry.summary
    assert "conversion by -3.1 % (degraded)" in entry.summary
    assert "went the other way" in entry.summary


def test_release_entry_sums_its_items_and_lists_every_final_verdict() -> None:
    flow, dora = shipped_feature()
    entry = release_entry("D1", flow, dora)
    assert entry is not None
    assert entry.version == "1.4.0" and entry.cost.item_ids == ("W1",)
    assert [k.kpi for k in entry.kpis] == ["conversion", "orders"]
    assert entry.outcome is None  # nothing was declared
    assert release_entry("nope", flow, dora) is None


@pytest.mark.parametrize(
    ("verdict_", "change", "expected"),
    [
        ("improved", 0.035, "met"),
        ("improved", 0.01, "partly-met"),
        ("neutral", 0.002, "not-met"),
        ("degraded", -0.031, "went-the-other-way"),
        ("inconclusive", None, "inconclusive"),
    ],
)
def test_expectations_are_judged_against_the_verdict_and_its_change(
    verdict_: Verdict, change: float | None, expected: str
) -> None:
    from stream_app.core.dora import KpiOutcome

    bet = ExpectedBenefit("conversion", "up", 0.03)
    assert judge_expectation(bet, KpiOutcome("conversion", verdict_, change, True, 1)) == expected
    assert judge_expectation(bet, None) == "pending"
    # Expecting latency to fall: a fall is good.
    fall = ExpectedBenefit("latency", "down", 0.1)
    assert judge_expectation(fall, KpiOutcome("latency", "improved", -0.12, False, 1)) == "met"


def test_a_work_items_first_active_stage_stands_in_for_the_first_commit() -> None:
    from stream_app.core.dora import DoraTracker
    from stream_app.events.model import Release, WorkflowEvent

    def work(t: float, stage: str, state: str) -> WorkflowEvent:
        return WorkflowEvent(
            id=f"w-{stage}",
            time=t,
            service="shop",
            item_id="W1",
            item_type="feature",
            stage=stage,
            action="entered",
            state=state,
        )  # type: ignore[arg-type]

    d = DoraTracker()
    d.on_workflow(work(1000.0, "backlog", "waiting"))  # waiting is not work started
    d.on_workflow(work(5000.0, "dev", "active"))
    d.on_release(
        Release(
            id="r1",
            service="shop",
            version="1",
            time=5000.0 + 7200.0,
            kind="deployed",
            change_ids=("W1",),
        )
    )
    rep = d.report(20000.0, 86400.0)["shop"]
    assert rep.lead_time is not None and rep.lead_time.p50 == 7200.0

    # A real change event is the first commit and replaces the stand-in.
    d2 = DoraTracker()
    d2.on_workflow(work(5000.0, "dev", "active"))
    d2.on_workflow(
        WorkflowEvent(
            id="c",
            time=4000.0,
            service="shop",
            item_id="W1",
            item_type=None,
            stage="dev",
            action="created",
            source_type="change",
        )
    )
    d2.on_release(
        Release(
            id="r1", service="shop", version="1", time=12200.0, kind="deployed", change_ids=("W1",)
        )
    )
    assert d2.report(20000.0, 86400.0)["shop"].lead_time.p50 == 8200.0  # type: ignore[union-attr]


def test_deployment_rework_rate_matches_hand_computed_values() -> None:
    # Failures begin at 20.5 (I5), 31 (I1), 45 (I2), 70 (I3), 80 (D7 degraded), 120 (I4) h.
    # Deployments after one within 24 h: D3 (9.5 h after I5), D4 (9 h after I1), D5 (13 h),
    # D6 (15 h after I2), D7 (10 h after I3), D8 (10 h after D7): 6; plus the rollback RB.
    t = DoraTracker(load_valuestream())
    feed(t, scenario())
    r = t.report(NOW, PERIOD)[SVC]
    assert (r.rollbacks, r.rework_deployments) == (1, 7)
    assert r.rework_rate == pytest.approx(7 / 9)  # of 8 deployments + 1 rollback
    # A 10 h window keeps D3 (9.5), D4 (9), D7 (10) and D8 (10): 4 + the rollback.
    t10 = DoraTracker(load_valuestream(), rework_window_seconds=10 * H)
    feed(t10, scenario())
    assert t10.report(NOW, PERIOD)[SVC].rework_rate == pytest.approx(5 / 9)
    # An 8 h window: none of the fixes, the rollback only.
    t8 = DoraTracker(load_valuestream(), rework_window_seconds=8 * H)
    feed(t8, scenario())
    assert t8.report(NOW, PERIOD)[SVC].rework_rate == pytest.approx(1 / 9)
    reg = Metrics(CollectorRegistry())
    reg.apply_samples(dora_metric_samples(t.report(NOW, PERIOD)))
    assert reg.registry.get_sample_value(
        "valueloop_deployment_rework_ratio", {"service": SVC}
    ) == pytest.approx(7 / 9)


@pytest.mark.parametrize(
    ("metric", "value", "level"),
    [
        ("deployment_frequency", 3.0, "elite"),  # several a day: on demand
        ("deployment_frequency", 1.0, "elite"),
        ("deployment_frequency", 0.5, "high"),  # every other day
        ("deployment_frequency", 1 / 7, "high"),  # weekly
        ("deployment_frequency", 0.1, "medium"),  # every 10 days
        ("deployment_frequency", 1 / 30, "medium"),  # monthly
        ("deployment_frequency", 0.01, "low"),
        ("lead_time", 23 * H, "elite"),
        ("lead_time", D, "high"),  # a day is no longer "less than one day"
        ("lead_time", 7 * D, "high"),
        ("lead_time", 8 * D, "medium"),
        ("lead_time", 31 * D, "low"),
        ("change_failure_rate", 0.05, "elite"),
        ("change_failure_rate", 0.10, "high"),
        ("change_failure_rate", 0.15, "medium"),
        ("change_failure_rate", 0.16, "low"),
        ("recovery_time", 59 * 60, "elite"),
        ("recovery_time", H, "high"),
        ("recovery_time", 2 * D, "medium"),
        ("recovery_time", 8 * D, "low"),
        ("recovery_time", None, None),
    ],
)
def test_dora_performance_levels_at_the_report_thresholds(
    metric: str, value: float | None, level: str | None
) -> None:
    assert level_of(metric, value) == level


def test_levels_of_the_hand_computed_scenario() -> None:
    t = DoraTracker(load_valuestream())
    feed(t, scenario())
    # 8/7 a day: elite; lead p50 28 h: high; 5/8 failed: low; recovery p50 8 h: high.
    assert dora_levels(t.report(NOW, PERIOD)[SVC]) == {
        "deployment_frequency": "elite",
        "lead_time": "high",
        "change_failure_rate": "low",
        "recovery_time": "high",
    }
