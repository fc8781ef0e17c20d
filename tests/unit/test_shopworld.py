"""The independent shop world and its oracle: noise model, truth, gaps, the scorer's bookkeeping."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from stream_app.core.types import KpiJudgement, VerdictRecord
from stream_app.events.model import KpiSample, Release
from stream_app.sim import shopworld as sw
from stream_app.sim import simworld
from stream_app.sim.accuracy import MISSING, bench_catalog, figures, judge_events, score
from stream_app.sim.truth import MAX_HORIZON, Truth

HOUR = 3600.0


@pytest.fixture(scope="module")
def world() -> sw.ShopWorld:
    return sw.plan_world(5, days=3)


def _monday(world: sw.ShopWorld) -> float:
    day = world.start
    while ((day // 86400) + 3) % 7 != 0:
        day += 86400.0
    return day


def _calm(world: sw.ShopWorld) -> sw.ShopWorld:
    """The same world with every release's effects removed."""
    rels = tuple(dataclasses.replace(r, effects={}) for r in world.releases)
    return dataclasses.replace(world, releases=rels)


@pytest.mark.parametrize(
    ("service", "hour", "minutes"),
    [("storefront", 19.0, 60), ("atelier", 14.0, 120), ("basket", 3.0, 60)],
)
def test_oracle_standard_error_matches_the_spread_of_generated_windows(
    world: sw.ShopWorld, service: str, hour: float, minutes: int
) -> None:
    t0 = world.start + 86400.0 + hour * HOUR
    r = sw.rates(world, service, t0, t0 + 60.0 * minutes)
    se = {k: math.sqrt(v) for k, v in sw.log_variances(r).items()}
    rng = np.random.default_rng(17)
    logs: dict[str, list[float]] = {k: [] for k in se}
    for _ in range(400):
        for k, v in sw.window_values(sw.draw(rng, r)).items():
            logs[k].append(math.log(v))
    for kpi, want in se.items():
        got = float(np.std(logs[kpi], ddof=1))
        assert got == pytest.approx(want, rel=0.15), kpi


def test_conversion_is_over_dispersed_by_about_5_percent_beyond_the_binomial(
    world: sw.ShopWorld,
) -> None:
    t0 = world.start + 86400.0
    r = sw.rates(world, "storefront", t0, t0 + 86400.0)
    d = sw.draw(np.random.default_rng(3), r)
    s, o = d.sessions.astype(float), d.orders.astype(float)
    p = r.conversion
    z = (o - s * p) / np.sqrt(s * p * (1 - p))
    # Excess variance over the binomial: sum(mu^2 cv^2) / sum(mu); cv = 5 %.
    want_excess = float(((s * p) ** 2).sum() * sw.CONVERSION_CV**2 / (s * p * (1 - p)).sum())
    got_excess = float(np.var(z)) - 1.0
    assert want_excess > 0.2
    assert got_excess == pytest.approx(want_excess, rel=0.35)
    # The oracle counts it: over an hour at peak it adds a third to the binomial variance.
    peak = sw.rates(world, "storefront", t0 + 18 * HOUR, t0 + 19 * HOUR)
    mu = peak.sessions * peak.conversion
    binomial = float((mu * (1 - peak.conversion)).sum() / mu.sum() ** 2)
    assert sw.log_variances(peak)["conversion"] > 1.25 * binomial


def test_outages_are_minutes_without_any_sample_of_the_service(world: sw.ShopWorld) -> None:
    assert world.outages
    events = sw.generate(world)
    stamps: dict[str, set[float]] = {}
    for ev in events:
        if isinstance(ev, KpiSample):
            stamps.setdefault(ev.service, set()).add(ev.time)
    for o in world.outages:
        if o.end > world.end:
            continue
        inside = {t for t in stamps[o.service] if o.start <= t < o.end}
        assert not inside
        others = {s for s in stamps if s != o.service}
        assert all(o.start in stamps[s] or _in_outage(world, s, o.start) for s in others)
    # The small service has quiet minutes with no order at all at night (not an outage).
    quiet = [
        ev
        for ev in events
        if isinstance(ev, KpiSample)
        and ev.service == "atelier"
        and ev.kpi == "orders"
        and ev.value == 0
    ]
    assert len(quiet) > 100


def _in_outage(world: sw.ShopWorld, service: str, t: float) -> bool:
    return any(o.service == service and o.start <= t < o.end for o in world.outages)


def test_sessions_are_never_changed_by_a_release(world: sw.ShopWorld) -> None:
    assert any(r.effects for r in world.releases)
    calm = _calm(world)

    def sessions(w: sw.ShopWorld) -> list[tuple[str, float, float]]:
        return [
            (e.service, e.time, e.value)
            for e in sw.generate(w)
            if isinstance(e, KpiSample) and e.kpi == "sessions"
        ]

    assert sessions(world) == sessions(calm)
    assert all(t.effect == 0.0 for t in sw.truth(world) if t.kpi == "sessions")


def test_truth_follows_the_plan(world: sw.ShopWorld) -> None:
    truths = sw.truth(world)
    by_id = {r.id: r for r in world.releases}
    assert len(truths) == len(world.releases) * len(sw.KPIS)
    for t in truths:
        rel = by_id[t.release_id]
        want = {
            "orders": "conversion",
            "revenue": "conversion",
            "conversion": "conversion",
            "latency_p95": "latency",
            "error_rate": "error_rate",
        }.get(t.kpi)
        assert t.effect == (rel.effects.get(want, 0.0) if want else 0.0)
        later = [r.time for r in world.releases if r.service == t.service and r.time > t.time]
        assert t.alone_end == min([t.time + MAX_HORIZON, *later[:1]])
        assert 0 < t.se < 1
    # Overlaps are symmetric and within an hour.
    pairs = {(t.release_id, o) for t in truths for o in t.overlaps}
    assert pairs == {(b, a) for a, b in pairs}
    assert all(abs(by_id[a].time - by_id[b].time) < HOUR for a, b in pairs)


def test_the_default_seeds_hold_enough_releases_and_every_kind_of_case() -> None:
    truths = [t for s in sw.SEEDS for t in sw.truth(sw.plan_world(s, sw.DAYS))]
    assert len({(t.seed, t.release_id) for t in truths}) >= 800
    conv = [t for t in truths if t.kpi == "conversion" and not t.overlapping]
    assert sum(t.visible_drop for t in conv) >= 150
    assert sum(t.big_drop and not t.visible_drop for t in conv) >= 10  # thin data exists
    assert sum(t.boundable for t in conv) >= 50
    assert sum(t.effect > 0.05 for t in conv) >= 30  # gains
    assert sum(t.surge and t.neutral for t in conv) >= 10
    assert sum(t.gap for t in conv) >= 50
    assert sum(t.low_traffic and t.neutral for t in conv) >= 20
    assert {t.service for t in conv if t.low_traffic} == {"atelier"}
    assert sum(t.overlapping for t in truths if t.kpi == "conversion") >= 50


def test_monday_surge_brings_traffic_that_converts_worse(world: sw.ShopWorld) -> None:
    calm = _calm(world)
    monday = _monday(calm)

    def at(t: float) -> sw.Rates:
        return sw.rates(calm, "basket", t, t + 60.0)

    surge, tuesday = at(monday + 9 * HOUR), at(monday + 33 * HOUR)
    assert surge.sessions[0] > 1.4 * tuesday.sessions[0]
    assert surge.conversion[0] == pytest.approx(0.8 * tuesday.conversion[0])
    # The step at midnight Sunday -> Monday.
    assert at(monday).sessions[0] > 1.5 * at(monday - 60.0).sessions[0]


def _record(rid: str, kpi: str, phase: str, rev: int, verdict: str, end: float) -> VerdictRecord:
    j = KpiJudgement(kpi, verdict, "", "")  # type: ignore[arg-type]  # literal from a str
    return VerdictRecord(
        rid,
        "basket",
        "1",
        0.0,
        kpi,
        False,
        phase,
        rev,
        (-3600.0, 0.0),
        (0.0, end),
        j,  # type: ignore[arg-type]
    )


def test_score_keeps_the_latest_final_and_the_first_degraded_record() -> None:
    t = Truth("shop", 1, "r1", "basket", 0.0, "conversion", "up", -0.2, 3600.0, 0.01)
    other = dataclasses.replace(t, release_id="r2")
    recs = [
        _record("r1", "conversion", "interim", 1, "degraded", 1200.0),
        _record("r1", "conversion", "final", 1, "inconclusive", 3600.0),
        _record("r1", "conversion", "final", 2, "degraded", 3600.0),
    ]
    got = score([t, other], recs)
    assert (got[0].verdict, got[0].first_degraded) == ("degraded", 1200.0)
    assert got[1].verdict == MISSING
    figs = figures(got)
    assert figs.rates["recall_visible_drops"].hits == 1
    assert figs.rates["missing_final"].hits == 1
    assert figs.first_degraded.median_min == 20.0


def test_a_small_world_runs_through_the_pipeline_with_a_final_verdict_per_pair() -> None:
    w = sw.plan_world(9, days=2)
    truths = sw.truth(w)
    events = sw.generate(w)
    assert isinstance(events[0], Release | KpiSample)
    pairs = score(truths, judge_events(events, bench_catalog()))
    assert pairs and all(p.verdict != MISSING for p in pairs)


def test_the_project_simulator_gets_the_same_oracle_definition() -> None:
    sc = simworld.sim_scenario(11, n_releases=12)
    truths = simworld.sim_truth(sc)
    assert len(truths) == 12 * len(simworld.KPIS)
    ids = [t.release_id for t in truths[:: len(simworld.KPIS)]]
    for plan, rid in zip(sc.releases, ids, strict=True):
        got = {t.kpi: t for t in truths if t.release_id == rid}
        conv = plan.effects.get("conversion", 0.0)
        traffic = plan.effects.get("sessions", 0.0)
        if not plan.scope:
            assert got["conversion"].effect == pytest.approx(conv)
            assert got["sessions"].effect == pytest.approx(traffic)
            assert got["orders"].effect == pytest.approx((1 + conv) * (1 + traffic) - 1)
        assert all(math.isfinite(t.se) and t.se > 0 for t in got.values())
        assert got["sessions"].se < got["orders"].se
        assert got["conversion"].alone_end - plan.time <= MAX_HORIZON
