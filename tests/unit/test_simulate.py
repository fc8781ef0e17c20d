"""The simulated shop: deterministic, time-ordered, effects really in the data, truth consistent."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pytest

from stream_app.events.model import Incident, KpiSample, Release, WorkflowEvent
from stream_app.simulate import (
    DAY,
    EFFECT_LEVELS,
    TRUTH_KPIS,
    PlannedRelease,
    Region,
    Scenario,
    SimEvent,
    TrafficDip,
    WorkflowPlan,
    accuracy_scenario,
    demo_scenario,
    generate,
    ground_truth,
    planned_events,
    releases,
    service_profile,
    weekly_scenario,
)

WED = 1717545600.0  # Wednesday 2024-06-05 00:00 UTC
HOUR = 3600.0


def shop(
    *plans: PlannedRelease, seed: int = 1, start: float = 8, hours: float = 5, **kw: object
) -> Scenario:
    """One busy checkout service on a Wednesday from ``start`` o'clock UTC."""
    return Scenario(
        seed=seed,
        start=WED + start * HOUR,
        duration_seconds=hours * HOUR,
        services=(service_profile("checkout", 8000),),
        releases=plans,
        **kw,  # type: ignore[arg-type]  # test helper forwards Scenario's keyword fields
    )


def bad(t: float = WED + 10 * HOUR, **effects: float) -> PlannedRelease:
    return PlannedRelease("checkout", t, "1.0.1", effects=effects or {"conversion": -0.10})


def total(
    events: Iterable[SimEvent], kpi: str, t0: float, t1: float, region: str | None = None
) -> tuple[float, float]:
    """(sum of values, sum of counts) of a stream over [t0, t1)."""
    value = count = 0.0
    for e in events:
        if (
            isinstance(e, KpiSample)
            and e.kpi == kpi
            and t0 <= e.time < t1
            and (region is None or e.labels["region"] == region)
        ):
            value += e.value
            count += e.count
    return value, count


def truth_of(scenario: Scenario, index: int = 0) -> dict[str, float]:
    rid = scenario.release_id(index)
    return {r.kpi: r.effect for r in ground_truth(scenario) if r.release_id == rid}


# ----------------------------------------------------------------- determinism and order


def test_same_seed_gives_identical_events_and_another_seed_differs() -> None:
    sc = shop(bad(), hours=3)
    first = list(generate(sc))
    assert first == list(generate(sc))
    other = list(generate(dataclasses.replace(sc, seed=2)))
    assert [e for e in other if isinstance(e, KpiSample)] != [
        e for e in first if isinstance(e, KpiSample)
    ]
    # Release ids come from seed + index: stable across runs, distinct across seeds.
    assert releases(sc)[0].id == "sim1-rel0000"
    assert releases(dataclasses.replace(sc, seed=2))[0].id != releases(sc)[0].id


def test_every_event_kind_is_yielded_in_event_time_order_release_before_its_samples() -> None:
    demo = demo_scenario()
    sc = dataclasses.replace(
        demo,
        services=tuple(service_profile(s.name, 100) for s in demo.services),
        latency_samples=0,
        order_events=True,  # per-order samples at their own second, between the others
        coarse_seconds=900.0,  # and 15-minute samples away from the releases
    )
    events = list(generate(sc))
    times = [e.time for e in events]
    assert times == sorted(times)
    assert times[0] == sc.start and times[-1] < sc.end
    assert {type(e) for e in events} == {Release, KpiSample, WorkflowEvent, Incident}
    assert [e for e in events if not isinstance(e, KpiSample)] == planned_events(sc)
    first_sample: dict[float, int] = {}
    for i, e in enumerate(events):
        if isinstance(e, KpiSample):
            first_sample.setdefault(e.time, i)
    for i, e in enumerate(events):
        if isinstance(e, Release):
            # The samples stamped at a release's time are post-release: the release comes first.
            assert first_sample[e.time] > i


def test_generate_is_lazy_so_huge_runs_stream() -> None:
    sc = accuracy_scenario(n_releases=400, samples_per_minute=50)  # ~100 million samples
    head = list(itertools.islice(generate(sc), 3000))
    assert len(head) == 3000
    assert head[0].time == sc.start and head[-1].time < sc.start + 60


# ----------------------------------------------------------------- effects are in the data


def test_conversion_drop_lowers_orders_by_its_size_against_the_counterfactual() -> None:
    sc = shop(bad(), latency_samples=0)
    calm = shop(dataclasses.replace(bad(), effects={}), latency_samples=0)
    events, events_cf = list(generate(sc)), list(generate(calm))
    window = (WED + 10 * HOUR, WED + 13 * HOUR)
    orders, _ = total(events, "orders", *window)
    orders_cf, _ = total(events_cf, "orders", *window)
    sessions, _ = total(events, "sessions", *window)
    sessions_cf, _ = total(events_cf, "sessions", *window)
    assert orders / orders_cf == pytest.approx(0.90, abs=0.02)
    assert sessions / sessions_cf == pytest.approx(1.0, abs=0.02)
    # Before the release the two runs are the same world, draw for draw.
    before = (WED + 8 * HOUR, WED + 10 * HOUR)
    assert total(events, "orders", *before) == total(events_cf, "orders", *before)
    truth = truth_of(sc)
    assert truth["orders"] == pytest.approx(-0.10)
    assert truth["conversion"] == pytest.approx(-0.10)


def test_regional_release_moves_only_its_region_and_truth_is_the_diluted_effect() -> None:
    t = WED + 16 * HOUR  # both regions busy
    kw = {"start": 15, "hours": 2, "latency_samples": 0}
    sc = shop(dataclasses.replace(bad(t, cart_value=0.10), scope={"region": "eu"}), **kw)
    calm = shop(dataclasses.replace(bad(t), effects={}), **kw)
    window = (t, t + HOUR)
    events, events_cf = list(generate(sc)), list(generate(calm))
    ratio = {}
    for region in ("eu", "us", None):
        v, n = total(events, "cart_value", *window, region=region)
        v_cf, n_cf = total(events_cf, "cart_value", *window, region=region)
        ratio[region] = (v / n) / (v_cf / n_cf) - 1
    assert ratio["eu"] == pytest.approx(0.10, abs=0.02)
    assert ratio["us"] == pytest.approx(0.0, abs=0.02)
    truth = truth_of(sc)["cart_value"]
    assert 0.02 < truth < 0.10  # diluted by the EU share of orders
    assert ratio[None] == pytest.approx(truth, abs=0.015)


def test_latency_effect_scales_the_p95_of_the_samples() -> None:
    sc = shop(bad(latency_ms=0.20), start=9, hours=3, latency_samples=40)
    calm = shop(dataclasses.replace(bad(), effects={}), start=9, hours=3, latency_samples=40)
    window = (WED + 10 * HOUR, WED + 12 * HOUR)

    def p95(s: Scenario) -> float:
        lat = [
            e.value
            for e in generate(s)
            if isinstance(e, KpiSample)
            and e.kpi == "latency_ms"
            and window[0] <= e.time < window[1]
        ]
        assert len(lat) == 2 * 40 * 120
        return float(np.quantile(lat, 0.95))

    assert p95(sc) / p95(calm) == pytest.approx(1.20, abs=0.04)
    assert truth_of(sc)["latency_p95"] == pytest.approx(0.20, abs=1e-9)


def test_samples_carry_counts_so_sums_and_means_are_exact() -> None:
    events = list(generate(shop(hours=1)))
    t0 = WED + 8 * HOUR
    by_minute: dict[tuple[float, str], dict[str, KpiSample]] = defaultdict(dict)
    for e in events:
        if isinstance(e, KpiSample) and e.kpi != "latency_ms":
            by_minute[(e.time, e.labels["region"])][e.kpi] = e
    # One pre-aggregated sample per stream, region and minute, stamped at the minute's start.
    assert sorted(by_minute) == [(t0 + 60.0 * m, r) for m in range(60) for r in ("eu", "us")]
    for m in by_minute.values():
        assert m["orders"].count == m["orders"].value <= m["sessions"].value
        assert m["revenue"].count == m["orders"].value
        assert m["cart_value"].value == m["revenue"].value  # mean = value / count
        assert m["errors"].value <= m["requests"].value


def test_samples_per_minute_and_per_order_mode_keep_the_traffic() -> None:
    base = shop(hours=2, latency_samples=0)
    window = (WED + 8 * HOUR, WED + 10 * HOUR)
    orders, _ = total(generate(base), "orders", *window)
    split = list(generate(dataclasses.replace(base, samples_per_minute=4)))
    sessions_split = [e for e in split if isinstance(e, KpiSample) and e.kpi == "sessions"]
    assert len(sessions_split) == 4 * 120 * 2
    assert total(split, "orders", *window)[0] == pytest.approx(orders, rel=0.05)
    per_order = [
        e
        for e in generate(dataclasses.replace(base, order_events=True))
        if isinstance(e, KpiSample) and e.kpi == "orders"
    ]
    assert all(e.value == 1.0 and e.count == 1.0 for e in per_order)
    assert len({e.time for e in per_order}) > 0.9 * len(per_order)  # spread within minutes
    assert len(per_order) == pytest.approx(orders, rel=0.05)


def test_low_traffic_period_thins_the_data_and_the_truth_accounts_for_it() -> None:
    t = WED + 10 * HOUR
    dip = TrafficDip(t - HOUR, t + HOUR, 0.05)
    sc = shop(bad(), latency_samples=0, dips=(dip,))
    events = list(generate(sc))
    inside, _ = total(events, "sessions", t, t + HOUR)
    before, _ = total(events, "sessions", t - 2 * HOUR, t - HOUR)
    assert 0.03 < inside / before < 0.08
    thin = next(r for r in ground_truth(sc) if r.kpi == "orders")
    full = next(r for r in ground_truth(shop(bad(), latency_samples=0)) if r.kpi == "orders")
    assert thin.post_sessions == pytest.approx(inside, rel=0.05)
    assert thin.effect == pytest.approx(full.effect)
    assert thin.expected_z < full.expected_z / 3


# ----------------------------------------------------------------- ground truth


@pytest.mark.parametrize(
    ("effects", "expected"),
    [
        ({"conversion": -0.08}, {"orders": -0.08, "revenue": -0.08, "conversion": -0.08}),
        ({"sessions": -0.10}, {"orders": -0.10, "revenue": -0.10}),
        ({"cart_value": 0.05}, {"revenue": 0.05, "cart_value": 0.05}),
        (
            {"conversion": 0.10, "cart_value": 0.10},
            {"orders": 0.10, "revenue": 0.21, "conversion": 0.10, "cart_value": 0.10},
        ),
        ({"error_rate": 0.10, "latency_ms": -0.05}, {"error_rate": 0.10, "latency_p95": -0.05}),
    ],
)
def test_truth_derives_every_catalog_kpi_from_the_levers(
    effects: dict[str, float], expected: dict[str, float]
) -> None:
    truth = truth_of(shop(bad(**effects)))
    assert set(truth) == set(TRUTH_KPIS)
    for kpi in TRUTH_KPIS:
        assert truth[kpi] == pytest.approx(expected.get(kpi, 0.0), abs=1e-9), kpi


def test_truth_marks_overlapping_releases_of_the_same_service_only() -> None:
    t = WED + 10 * HOUR
    sc = Scenario(
        seed=3,
        start=WED,
        duration_seconds=20 * HOUR,
        services=(service_profile("checkout"), service_profile("search")),
        releases=(
            PlannedRelease("checkout", t, "1.0.1", effects={"conversion": -0.1}),
            PlannedRelease("checkout", t + 25 * 60, "1.0.2", effects={"conversion": 0.1}),
            PlannedRelease("search", t, "2.0.0"),
            PlannedRelease("checkout", t + 3 * HOUR, "1.0.3"),
        ),
    )
    by_id = {r.release_id: r for r in ground_truth(sc) if r.kpi == "orders"}
    ids = [sc.release_id(i) for i in range(4)]
    assert by_id[ids[0]].overlaps == (ids[1],)
    assert by_id[ids[1]].overlaps == (ids[0],)
    assert by_id[ids[0]].acceptable_verdicts() == {"confounded"}
    assert not by_id[ids[2]].confounded and not by_id[ids[3]].confounded
    # Each release's own effect, even when confounded.
    assert by_id[ids[0]].effect == pytest.approx(-0.1)
    assert by_id[ids[1]].effect == pytest.approx(0.1)


def test_truth_says_what_verdict_is_acceptable_given_traffic() -> None:
    busy = {r.kpi: r for r in ground_truth(shop(bad(conversion=-0.10, latency_ms=0.10)))}
    assert busy["orders"].acceptable_verdicts() == {"degraded"}
    assert busy["conversion"].acceptable_verdicts() == {"degraded"}
    assert "degraded" in busy["latency_p95"].acceptable_verdicts()  # slower is worse
    assert busy["cart_value"].acceptable_verdicts() <= {"neutral", "inconclusive"}
    # Same release at 04:00 local time on a tiny EU-only service: too few orders to see it.
    night = Scenario(
        seed=1,
        start=WED,
        duration_seconds=6 * HOUR,
        services=(service_profile("checkout", 100),),
        regions=(Region("eu", 1.0, 1.0),),
        releases=(bad(WED + 3 * HOUR),),
    )
    thin = {r.kpi: r for r in ground_truth(night)}
    assert thin["orders"].regime == "low"
    assert thin["orders"].post_observations < 100
    assert thin["orders"].expected_z < 3
    assert thin["orders"].acceptable_verdicts() == {"degraded", "inconclusive"}


def test_truth_expected_traffic_matches_the_generated_traffic() -> None:
    sc = shop(bad(), latency_samples=0)
    rec = next(r for r in ground_truth(sc) if r.kpi == "orders")
    t = rec.time
    events = list(generate(sc))
    sessions, _ = total(events, "sessions", t - HOUR, t)
    orders, _ = total(events, "orders", t, t + HOUR)
    assert sessions == pytest.approx(rec.baseline_sessions, rel=0.03)
    assert orders == pytest.approx(rec.post_observations, rel=0.05)


# ----------------------------------------------------------------- presets


def test_demo_tells_the_story_the_demo_relies_on() -> None:
    sc = demo_scenario()
    assert 3 <= len(sc.services) <= 4
    first = min(p.time for p in sc.releases)
    assert first - sc.start >= DAY + HOUR  # a day-ago reference exists for every window
    truth = {(r.release_id, r.kpi): r for r in ground_truth(sc)}
    labels = {sc.release_id(i): p for i, p in enumerate(sc.releases)}
    bad_id = next(i for i, p in labels.items() if p.label == "bad")
    assert truth[(bad_id, "orders")].effect == pytest.approx(-0.08)
    # Visible even through the noise a day-ago seasonal reference adds.
    assert truth[(bad_id, "conversion")].acceptable_verdicts(seasonal_factor=2**0.5) == {"degraded"}
    good_id = next(i for i, p in labels.items() if p.label == "good")
    assert truth[(good_id, "cart_value")].acceptable_verdicts() == {"improved"}
    assert sum(p.label == "neutral" for p in labels.values()) >= 2
    assert any(p.kind == "flag" and p.flag_key for p in labels.values())
    assert any(p.kind == "rolledback" for p in labels.values())
    assert any(p.scope for p in labels.values())
    assert sum(truth[(i, "orders")].confounded for i in labels) == 2

    planned = planned_events(sc)
    incidents = [e for e in planned if isinstance(e, Incident)]
    assert {e.action for e in incidents} == {"detected", "resolved"}
    assert all(e.deployment_id == bad_id for e in incidents)
    assert min(e.time for e in incidents) > labels[bad_id].time

    # Work items: the injected bottleneck has the longest stage time; delivered items leave
    # "deploy" exactly at their release, whose commits name them.
    assert sc.workflow is not None and sc.workflow.bottleneck == "waiting-for-qa"
    entered: dict[tuple[str, str], float] = {}
    spent: dict[str, list[float]] = defaultdict(list)
    rel_by_commit = {c: r for r in releases(sc) for c in r.commits}
    for e in planned:
        if not isinstance(e, WorkflowEvent):
            continue
        if e.action == "entered":
            entered[(e.item_id, e.stage)] = e.time
            continue
        spent[e.stage].append(e.time - entered[(e.item_id, e.stage)])
        if e.stage == "deploy":
            (sha,) = e.commits
            assert rel_by_commit[sha].time == e.time
            assert e.item_id in rel_by_commit[sha].change_ids
    means = {s: float(np.mean(v)) for s, v in spent.items()}
    assert max(means, key=lambda s: means[s]) == "waiting-for-qa"
    assert means["waiting-for-qa"] > 2 * max(v for s, v in means.items() if s != "waiting-for-qa")
    assert len(spent["deploy"]) >= 10


def test_accuracy_scenario_spreads_many_releases_with_known_effects() -> None:
    sc = accuracy_scenario(seed=11)
    assert len(sc.releases) == 200
    assert min(p.time for p in sc.releases) - sc.start >= DAY + HOUR
    assert all(set(p.effects.values()) <= set(EFFECT_LEVELS) for p in sc.releases)
    assert {v for p in sc.releases for v in p.effects.values()} == set(EFFECT_LEVELS) - {0.0}
    assert any(not p.effects for p in sc.releases)
    assert all(re.fullmatch(r"\d+\.\d+\.\d+|flag-\d+=on@\d+%", p.version) for p in sc.releases)
    truth = {r.release_id: r for r in ground_truth(sc) if r.kpi == "orders"}
    regimes = {r.regime for r in truth.values()}
    assert {"low", "ramp", "steady"} <= regimes
    assert sum(r.confounded for r in truth.values()) >= 10
    # Non-overlapping releases of a service are at least two hours apart.
    by_service: dict[str, list[float]] = defaultdict(list)
    for i, p in enumerate(sc.releases):
        if not truth[sc.release_id(i)].confounded:
            by_service[p.service].append(p.time)
    for times in by_service.values():
        assert min(np.diff(sorted(times))) >= 2 * HOUR
    assert len({sc.release_id(i) for i in range(200)}) == 200
    assert accuracy_scenario(seed=11) == sc


def test_weekly_scenario_has_a_monday_rise_that_only_a_week_ago_reference_explains() -> None:
    sc = weekly_scenario()
    monday_release = next(p for p in sc.releases if p.label == "neutral")
    assert monday_release.time - sc.start >= 8 * DAY
    assert ((monday_release.time // DAY) + 3) % 7 == 0  # a Monday
    rec = {r.kpi: r for r in ground_truth(sc) if r.time == monday_release.time}
    assert all(r.effect == 0.0 for r in rec.values())
    assert rec["orders"].naive_change > 0.15  # traffic climbs in the window by itself
    # Coarse samples far from the releases, per-minute ones around them and a day and a
    # week earlier: the seasonal references have full resolution.
    lean = list(generate(dataclasses.replace(sc, latency_samples=0)))
    stamps = sorted(
        e.time
        for e in lean
        if isinstance(e, KpiSample)
        and e.kpi == "sessions"
        and e.service == "checkout"
        and e.labels["region"] == "eu"
    )
    assert len(stamps) < 6000  # of ~12,800 minutes: per minute only around the judged hours
    gaps = dict(zip(stamps[:-1], np.diff(stamps).tolist(), strict=True))
    t = monday_release.time
    for ref in (t, t - DAY, t - 7 * DAY):
        assert all(gaps[ref + 60 * m] == 60 for m in range(-60, 60))
    assert max(gaps.values()) == 900
    # The week-ago window rises like this Monday's; the day-ago (Sunday) one much less.
    sessions = {}
    for ref in (t, t - DAY, t - 7 * DAY):
        post = total(lean, "sessions", ref, ref + HOUR)[0]
        pre = total(lean, "sessions", ref - HOUR, ref)[0]
        sessions[ref] = post / pre - 1
    assert abs(sessions[t] - sessions[t - 7 * DAY]) < 0.03
    assert sessions[t] - sessions[t - DAY] > 0.05


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "plan",
    [
        PlannedRelease("checkout", WED + 9 * HOUR + 30, "1.0.0"),  # not a whole minute
        PlannedRelease("checkout", WED + 9 * HOUR, "1.0.0", effects={"orders": -0.1}),
        PlannedRelease("checkout", WED + 9 * HOUR, "1.0.0", scope={"region": "apac"}),
        PlannedRelease("nope", WED + 9 * HOUR, "1.0.0"),
        PlannedRelease("checkout", WED + 30 * HOUR, "1.0.0"),  # after the run
    ],
)
def test_scenario_rejects_plans_it_cannot_simulate_truthfully(plan: PlannedRelease) -> None:
    with pytest.raises(ValueError):
        shop(plan, hours=2)


def test_no_workflow_plan_means_no_work_items_and_releases_have_no_commits() -> None:
    sc = shop(bad(), workflow=None)
    assert not any(isinstance(e, WorkflowEvent) for e in planned_events(sc))
    assert releases(sc)[0].commits == ()
    late = bad(WED + 30 * HOUR)  # room for work items to flow before it
    with_items = shop(
        late, start=0, hours=32, workflow=WorkflowPlan(items_per_release=20, wip_items=0)
    )
    shipped = releases(with_items)[0]
    assert len(shipped.commits) == len(shipped.change_ids) >= 5
    item_ids = {e.item_id for e in planned_events(with_items) if isinstance(e, WorkflowEvent)}
    assert set(shipped.change_ids) == item_ids
