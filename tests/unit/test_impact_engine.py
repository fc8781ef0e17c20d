"""Impact engine: releases joined to KPI windows in event time, confounding, state, replay."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence

import pytest

from stream_app.core.catalog import Catalog, load_catalog, parse_catalog
from stream_app.core.impact import ImpactEngine, plan_windows
from stream_app.core.judge import Look, Reference
from stream_app.core.types import KpiJudgement, KpiSpec, VerdictRecord, WindowData
from stream_app.events.model import KpiSample, Release

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86400)  # midnight UTC
HOUR = 3600.0

CATALOG = parse_catalog(
    """
[defaults]
baseline = "30m"
post = "30m"
max_horizon = "30m"
overlap = "30m"
bucket = "1m"
allowed_lateness = "2m"
min_buckets = 5
min_samples = 10
seasonality = "none"

[[kpi]]
name = "orders"
aggregation = "sum"
critical = true

[[kpi]]
name = "conversion"
aggregation = "ratio"
numerator = "orders"
denominator = "sessions"

[[kpi]]
name = "latency_p95"
aggregation = "quantile"
stream = "latency_ms"
quantile = 0.95
direction = "down"
""",
    source="test-kpis.toml",
)


def stub_judge(
    spec: KpiSpec,
    base: WindowData,
    post: WindowData,
    refs: Sequence[Reference] = (),
    *,
    look: Look | None = None,
    alpha: float = 0.05,
) -> KpiJudgement:
    """Calls any change beyond min_change, in the KPI's good or bad direction."""
    b, p = base.value, post.value
    if not b or p is None:
        return KpiJudgement(spec.name, "inconclusive", "stub", "empty-baseline")
    change = p / b - 1.0
    if abs(change) < spec.min_change:
        verdict = "neutral"
    elif (change > 0) == (spec.direction == "up"):
        verdict = "improved"
    else:
        verdict = "degraded"
    return KpiJudgement(
        spec.name,
        verdict,  # type: ignore[arg-type]  # one of the three literals above
        "stub",
        "stub",
        baseline_value=b,
        post_value=p,
        change=change,
        method="stub(" + ", ".join(f"{r.label}:{r.lag_days}" for r in refs) + ")",
        reference=refs[0].label if refs else None,
    )


def engine(catalog: Catalog = CATALOG, *, real: bool = False, interim: int = 10) -> ImpactEngine:
    if real:
        return ImpactEngine(catalog, interim_every_buckets=interim)
    return ImpactEngine(catalog, interim_every_buckets=interim, judge=stub_judge)


def release(rid: str, t: float, service: str = "shop", **kw: object) -> Release:
    return Release(id=rid, service=service, version=f"v-{rid}", time=t, kind="deployed", **kw)  # type: ignore[arg-type]


def traffic(
    start: float,
    end: float,
    *,
    service: str = "shop",
    step: float = 10.0,
    seed: int = 1,
    order_rate: float = 3.0,
    drop_at: float | None = None,
    drop: float = 0.5,
    labels: dict[str, str] | None = None,
) -> Iterator[KpiSample]:
    """Sessions, orders and latency every `step` seconds; orders fall by `drop` after `drop_at`."""
    rng = random.Random(seed)
    t = start
    while t < end:
        rate = order_rate * (1.0 - drop if drop_at is not None and t >= drop_at else 1.0)
        lab = labels or {}
        yield KpiSample(service, "sessions", t, 10.0, labels=lab)
        yield KpiSample(
            service,
            "orders",
            t,
            float(sum(rng.random() < rate / 10 for _ in range(10))),
            labels=lab,
        )
        yield KpiSample(service, "latency_ms", t, rng.lognormvariate(4.0, 0.3), labels=lab)
        t += step


def run(
    eng: ImpactEngine, events: Sequence[KpiSample | Release], *, advance_every: int = 1
) -> list[VerdictRecord]:
    """Feed events in order, advancing every `advance_every` events (and at the end)."""
    out: list[VerdictRecord] = []
    for i, e in enumerate(events, start=1):
        if isinstance(e, Release):
            out.extend(eng.on_release(e))
        else:
            eng.on_sample(e)
        if i % advance_every == 0:
            out.extend(eng.advance())
    out.extend(eng.advance())
    return out


def with_release(samples: Iterator[KpiSample], *rels: Release) -> list[KpiSample | Release]:
    """Samples with releases inserted at their event time."""
    events: list[KpiSample | Release] = [*samples, *rels]
    return sorted(events, key=lambda e: e.time)


def finals(records: Sequence[VerdictRecord]) -> dict[tuple[str, str], VerdictRecord]:
    """The latest final record per (release, kpi)."""
    out: dict[tuple[str, str], VerdictRecord] = {}
    for r in records:
        if r.phase == "final":
            out[(r.release_id, r.kpi)] = r
    return out


def test_step_drop_in_orders_after_a_release_is_degraded() -> None:
    t = T0 + 2 * HOUR
    events = with_release(traffic(T0, T0 + 4 * HOUR, drop_at=t), release("r1", t))
    got = finals(run(engine(), events))
    assert got[("r1", "orders")].judgement.verdict == "degraded"
    assert got[("r1", "conversion")].judgement.verdict == "degraded"
    assert got[("r1", "orders")].judgement.change == pytest.approx(-0.5, abs=0.1)
    rec = got[("r1", "orders")]
    assert (rec.baseline_window, rec.post_window) == ((t - 1800, t), (t, t + 1800))
    assert (rec.phase, rec.revision, rec.critical, rec.version) == ("final", 1, True, "v-r1")


def test_step_drop_with_the_real_judge_is_degraded_and_latency_neutral() -> None:
    t = T0 + 2 * HOUR
    events = with_release(traffic(T0, T0 + 4 * HOUR, drop_at=t, drop=0.3), release("r1", t))
    got = finals(run(engine(real=True), events))
    orders = got[("r1", "orders")].judgement
    assert orders.verdict == "degraded", orders.reason
    assert got[("r1", "latency_p95")].judgement.verdict in ("neutral", "inconclusive")


def test_the_final_verdict_waits_for_the_watermark_to_pass_the_post_window() -> None:
    t = T0 + HOUR
    eng = engine(interim=0)
    out = run(eng, with_release(traffic(T0, t + 1800 + 60), release("r1", t)))
    # Newest event is ~ t + 30m + 1m, lateness 2m: the post window [t, t + 30m) is not closed.
    assert finals(out) == {}
    assert [r.id for r in eng.pending_releases()] == ["r1"]
    out = run(eng, list(traffic(t + 1800 + 60, t + 1800 + 200)))
    assert {k for k, _ in finals(out)} == {"r1"}
    assert eng.pending_releases() == []
    # Samples for the closed windows are now late and change nothing.
    assert eng.on_sample(KpiSample("shop", "orders", t + 60, 1000.0)) == "late"
    assert finals(eng.advance()) == {}


LOOKS = parse_catalog(
    """
[defaults]
baseline = "30m"
post = "5m"
max_horizon = "30m"
overlap = "30m"
bucket = "1m"
allowed_lateness = "2m"
min_buckets = 5
min_samples = 10
seasonality = "none"

[[kpi]]
name = "orders"
aggregation = "sum"
""",
    source="looks.toml",
)


def test_a_decision_pages_at_once_and_is_final_past_the_overlap_reach() -> None:
    t = T0 + HOUR
    events = with_release(traffic(T0, T0 + 3 * HOUR, drop_at=t), release("r1", t))
    out = run(engine(LOOKS, interim=5), events)
    orders = [r for r in out if r.kpi == "orders"]
    # The stub calls the drop at the first look (5 minutes): an interim `degraded` at once (it
    # pages), final at the first look past the overlap reach (30 min), when no release within
    # reach can still confound it.
    assert [(r.phase, r.judgement.verdict, r.post_window) for r in orders] == [
        ("interim", "degraded", (t, t + 300)),
        ("final", "degraded", (t, t + 1800)),
    ]


def test_looks_go_on_until_the_horizon_and_interim_records_only_when_the_verdict_changes() -> None:
    calls: list[float] = []

    def undecided(
        spec: KpiSpec,
        base: WindowData,
        post: WindowData,
        refs: Sequence[Reference] = (),
        *,
        look: Look | None = None,
        alpha: float = 0.05,
    ) -> KpiJudgement:
        assert look is not None
        calls.append(post.end - post.start)
        code = "wide-ci" if look.last else "interim-no-call"
        return KpiJudgement(spec.name, "inconclusive", "stub", code)

    t = T0 + HOUR
    eng = ImpactEngine(LOOKS, interim_every_buckets=5, judge=undecided)
    out = run(eng, with_release(traffic(T0, T0 + 3 * HOUR), release("r1", t)))
    # Looks at 5, 10, 15, 20, 25 and 30 minutes (the horizon): one interim record, one final.
    assert calls == [300.0, 600.0, 900.0, 1200.0, 1500.0, 1800.0]
    assert [(r.phase, r.revision, r.post_window[1] - t) for r in out] == [
        ("interim", 1, 300.0),
        ("final", 1, 1800.0),
    ]


def test_the_next_release_cuts_the_horizon_and_the_verdict_so_far_stands() -> None:
    t = T0 + HOUR
    a, b = release("a", t), release("b", t + 35 * 60)  # further apart than the overlap
    eng = ImpactEngine(
        dataclasses.replace(
            LOOKS, kpis=(dataclasses.replace(LOOKS.kpis[0], overlap_seconds=600.0),)
        ),
        interim_every_buckets=5,
        judge=stub_judge,
    )
    out = run(eng, with_release(traffic(T0, T0 + 3 * HOUR), a, b))
    got = finals(out)
    assert got[("a", "orders")].judgement.confounders == ()
    assert got[("a", "orders")].post_window[1] <= b.time


def test_overlapping_releases_are_both_confounded_naming_each_other() -> None:
    t = T0 + 2 * HOUR
    a, b = release("a", t), release("b", t + 600)
    got = finals(run(engine(), with_release(traffic(T0, T0 + 4 * HOUR, drop_at=t), a, b)))
    for kpi in ("orders", "conversion", "latency_p95"):
        assert got[("a", kpi)].judgement.verdict == "confounded"
        assert got[("a", kpi)].judgement.confounders == ("b",)
        assert got[("b", kpi)].judgement.verdict == "confounded"
        assert got[("b", kpi)].judgement.confounders == ("a",)
        assert got[("a", kpi)].judgement.reason_code == "overlap"


def test_a_release_arriving_after_an_overlapping_final_verdict_revises_it() -> None:
    t = T0 + 2 * HOUR
    eng = engine()
    out = run(eng, with_release(traffic(T0, T0 + 3 * HOUR, drop_at=t), release("a", t)))
    assert finals(out)[("a", "orders")].judgement.verdict == "degraded"
    # A rollback 20 minutes after the release, reported late (after a's final verdict).
    rollback = Release("rb", "shop", "v-old", t + 1200, "rolledback")
    revisions = eng.on_release(rollback)
    assert {(r.release_id, r.kpi, r.revision) for r in revisions} == {
        ("a", "orders", 2),
        ("a", "conversion", 2),
        ("a", "latency_p95", 2),
    }
    assert all(r.judgement.verdict == "confounded" for r in revisions)
    assert all(r.judgement.confounders == ("rb",) for r in revisions)
    later = finals(run(eng, list(traffic(T0 + 3 * HOUR, T0 + 4 * HOUR, seed=2))))
    assert later[("rb", "orders")].judgement.verdict == "confounded"
    assert later[("rb", "orders")].judgement.confounders == ("a",)


def test_releases_further_apart_than_the_windows_are_not_confounded() -> None:
    t = T0 + 2 * HOUR
    rels = (release("a", t), release("b", t + 1801))
    got = finals(run(engine(), with_release(traffic(T0, T0 + 4 * HOUR), *rels)))
    assert got[("a", "orders")].judgement.confounders == ()
    assert got[("b", "orders")].judgement.confounders == ()


def test_a_repeated_release_id_is_judged_once() -> None:
    t = T0 + 2 * HOUR
    eng = engine()
    r = release("r1", t)
    assert eng.add_release(r)[0] == "accepted"
    assert eng.add_release(r)[0] == "duplicate"
    events = with_release(traffic(T0, T0 + 3 * HOUR), r)
    out = [x for x in run(eng, events) if x.phase == "final"]
    assert sorted(x.kpi for x in out) == ["conversion", "latency_p95", "orders"]
    assert all(x.judgement.confounders == () for x in out)  # not confounded by itself


def test_a_release_without_any_samples_stays_pending() -> None:
    eng = engine()
    eng.on_release(release("r1", T0, service="quiet"))
    eng.on_release(release("r2", T0 + 6 * HOUR, service="quiet"))
    # Releases do not move the watermark: with no telemetry nothing can be judged yet.
    assert finals(eng.advance()) == {}
    assert {r.id for r in eng.pending_releases()} == {"r1", "r2"}


def test_a_release_read_before_its_telemetry_gives_the_same_verdicts() -> None:
    """The worker may read the deployments topic far ahead of the telemetry topic."""
    t = T0 + 2 * HOUR
    r = release("r1", t)
    # Telemetry reaches past the post window (30 min + lateness), while the release's baseline is
    # still retained (a release later than the retention can no longer be judged: too-old).
    samples = list(traffic(T0, T0 + 2 * HOUR + 33 * 60))
    in_order = finals(run(engine(), with_release(samples, r)))
    ahead = finals(run(engine(), [r, *samples]))
    behind = finals(run(engine(), [*samples, r]))
    assert in_order and set(in_order) == set(ahead) == set(behind)
    for k, rec in in_order.items():
        assert ahead[k].judgement == rec.judgement
        assert behind[k].judgement == rec.judgement


def test_a_release_arriving_after_its_baseline_left_the_history_is_not_judged_on_a_stub() -> None:
    r = release("r1", T0 + 2 * HOUR)
    got = finals(run(engine(), [*traffic(T0, T0 + 3 * HOUR), r]))
    assert got and {v.judgement.reason_code for v in got.values()} == {"history-evicted"}
    assert {v.judgement.verdict for v in got.values()} == {"inconclusive"}


def test_a_service_no_kpi_applies_to_is_out_of_scope() -> None:
    cat = parse_catalog('[[kpi]]\nname = "orders"\naggregation = "sum"\nservices = ["shop"]\n')
    eng = engine(cat)
    assert eng.add_release(release("r1", T0, service="search")) == ("out-of-scope", [])
    assert eng.on_sample(KpiSample("search", "orders", T0, 1.0)) == "out-of-scope"
    assert eng.on_sample(KpiSample("shop", "clicks", T0, 1.0)) == "unknown-stream"
    assert eng.services() == ["shop"]


def test_snapshot_and_restore_mid_stream_give_identical_verdicts() -> None:
    t = T0 + 2 * HOUR
    events = with_release(
        traffic(T0, T0 + 4 * HOUR, drop_at=t, labels={"region": "eu"}),
        release("a", t),
        release("b", t + 900),
        release("c", t + 1.5 * HOUR),
    )
    uninterrupted = run(engine(real=True), events)
    for cut in (len(events) // 3, (len(events) * 7) // 10):
        first = engine(real=True)
        out = run(first, events[:cut])
        second = engine(real=True)  # a restarted worker
        for service in first.dirty_services():
            second.restore(service, first.snapshot(service))
        out += run(second, events[cut:])
        assert out == uninterrupted


def test_verdicts_do_not_depend_on_how_often_advance_runs() -> None:
    t = T0 + 2 * HOUR
    events = with_release(
        traffic(T0, T0 + 4 * HOUR, drop_at=t), release("a", t), release("b", t + 1200)
    )
    per_event = run(engine(), events)
    per_batch = run(engine(), events, advance_every=500)
    assert per_batch == per_event


def test_dirty_services_name_only_changed_services() -> None:
    eng = engine()
    eng.on_sample(KpiSample("shop", "orders", T0, 1.0))
    eng.on_sample(KpiSample("cart", "orders", T0, 1.0))
    assert eng.dirty_services() == {"shop", "cart"}
    eng.clear_dirty()
    assert eng.on_sample(KpiSample("shop", "clicks", T0, 1.0)) == "unknown-stream"
    assert eng.dirty_services() == set()
    eng.on_sample(KpiSample("cart", "orders", T0 + 1, 1.0))
    assert eng.dirty_services() == {"cart"}


def test_release_between_buckets_skips_the_bucket_it_falls_in() -> None:
    spec = CATALOG.kpis[0]
    p = plan_windows(spec, T0 + 90.0)
    assert (p.base_first * 60.0, p.base_stop * 60.0) == (T0 + 60 - 1800, T0 + 60)
    assert (p.post_first * 60.0, p.post_stop * 60.0) == (T0 + 120, T0 + 120 + 1800)


def test_weekly_then_daily_history_serves_as_seasonal_reference() -> None:
    cat = parse_catalog(
        '[defaults]\nbaseline = "30m"\npost = "30m"\nmax_horizon = "30m"\nmin_buckets = 5\n'
        'min_samples = 10\n[[kpi]]\nname = "orders"\naggregation = "sum"\nseasonality = "auto"\n'
    )
    t = T0 + 8 * 86400 + 12 * HOUR

    def samples(*days_back: int) -> Iterator[KpiSample]:
        for d in days_back:
            start = t - d * 86400 - HOUR
            for m in range(120):
                yield KpiSample("shop", "orders", start + 60 * m, 5.0)
        for m in range(120):
            yield KpiSample("shop", "orders", t - HOUR + 60 * m, 5.0)

    def seasonal(*days_back: int) -> str | None:
        events = with_release(samples(*days_back), release("r", t))
        eng = engine(cat, interim=0)
        out = run(eng, events) + eng.close_input()
        return finals(out)[("r", "orders")].seasonal_reference

    assert seasonal(7, 1) == "weekly"
    assert seasonal(1) == "daily"
    assert seasonal() is None


SEASONAL = parse_catalog(
    '[defaults]\nbaseline = "30m"\npost = "30m"\nmax_horizon = "30m"\nmin_buckets = 5\n'
    "min_samples = 10\n"
    '[[kpi]]\nname = "orders"\naggregation = "sum"\nseasonality = "auto"\n'
)
T_SEASONAL = T0 + 8 * 86400 + 12 * HOUR


def orders_around(t: float, *days_back: int, lead: float = HOUR) -> Iterator[KpiSample]:
    """5 orders a minute from `lead` before to an hour after t, the same days back, and today."""
    for d in (*days_back, 0):
        start = t - d * 86400 - lead
        for m in range(round((lead + HOUR) / 60)):
            yield KpiSample("shop", "orders", start + 60 * m, 5.0)


def final_of(events: list[KpiSample | Release], rid: str = "r") -> VerdictRecord:
    eng = engine(SEASONAL, interim=0)
    return finals(run(eng, events) + eng.close_input())[(rid, "orders")]


def test_a_reference_day_holding_a_release_serves_with_its_step_taken_out() -> None:
    t = T_SEASONAL
    # A release 10 minutes into yesterday's post window lifted yesterday's orders by half: read
    # as it is, its step would pass for this release's. With two other days of the same kind to
    # tell the shape of the hours (t is a Wednesday: Tuesday, Friday and Thursday are), the step
    # is taken out and yesterday serves over the whole window, at one level.
    y_time = t - 86400 + 600
    seen: list[Reference] = []

    def capture(spec: KpiSpec, base: WindowData, post: WindowData, refs=(), **kw):  # type: ignore[no-untyped-def]
        seen[:] = list(refs)
        return stub_judge(spec, base, post, refs, **kw)

    events = [
        dataclasses.replace(s, value=7.5) if y_time < s.time < t - HOUR else s
        for s in orders_around(t, 1, 5, 6)
    ]
    eng = ImpactEngine(SEASONAL, interim_every_buckets=0, judge=capture)
    out = finals(
        run(eng, with_release(events, release("r", t), release("y", y_time))) + eng.close_input()
    )
    assert out[("r", "orders")].judgement.method == "stub(daily:1, daily:5, daily:6)"
    yday = next(r for r in seen if r.lag_days == 1)
    values = [
        n / d
        for n, d in zip(yday.base.num + yday.post.num, yday.base.den + yday.post.den, strict=True)
        if d > 0
    ]
    assert len(values) >= 50 and max(values) - min(values) < 1e-6
    # Alone (no other day of its kind) yesterday serves only up to its release, short of the
    # 30-minute post window here: no reference.
    rec = final_of(with_release(orders_around(t, 1), release("r", t), release("y", y_time)))
    assert rec.judgement.reason_code == "no-reference"


def test_a_reference_out_of_line_with_the_others_is_left_out() -> None:
    from stream_app.core.judge import judge_kpi

    def flat(level: float) -> WindowData:
        return WindowData(0, 1800, (level,) * 30, (1.0,) * 30, level * 30, (level,) * 30)

    refs = [
        Reference("daily", 1, flat(100), flat(60)),  # a step on that day: -40 %
        Reference("daily", 2, flat(100), flat(100)),
        Reference("daily", 3, flat(101), flat(100)),
    ]
    rng = random.Random(3)
    base = WindowData(
        0, 1800, tuple(float(rng.gauss(100, 10)) for _ in range(30)), (1.0,) * 30, 3000
    )
    j = judge_kpi(SEASONAL.kpis[0], base, base, refs)
    assert j.reference == "daily x2" and "1d" in j.reason


def test_a_reference_older_than_the_first_sample_is_not_read_as_zeros() -> None:
    t = T_SEASONAL
    # History starts 3 minutes into yesterday's baseline window (enough buckets to pass as a
    # reference): those 3 minutes would read as 0 orders.
    events = with_release(
        [s for s in orders_around(t, 1) if s.time >= t - 86400 - 1620], release("r", t)
    )
    assert final_of(events).seasonal_reference is None


def test_a_baseline_never_reaches_before_the_first_sample() -> None:
    t = T0 + 2 * HOUR
    # Traffic starts 10 minutes before the release: a 30-minute baseline would be 2/3 missing.
    got = finals(run(engine(real=True), with_release(traffic(t - 600, t + HOUR), release("r", t))))
    orders = got[("r", "orders")]
    assert orders.baseline_window[0] >= t - 600
    assert orders.judgement.verdict in ("neutral", "inconclusive")


def test_a_scoped_release_prefers_its_own_history_to_another_regions_traffic() -> None:
    t = T_SEASONAL
    eu = [dataclasses.replace(s, labels={"region": "eu"}) for s in orders_around(t, 1)]
    us = [dataclasses.replace(s, labels={"region": "us"}) for s in orders_around(t, 1)]
    scoped = release("r", t, scope={"region": "eu"})
    rec = final_of(with_release(iter([*eu, *us]), scoped))
    assert rec.seasonal_reference == "daily"  # another region's day has another shape
    assert rec.extra["scope"] == "region=eu"


def test_a_scoped_release_uses_the_rest_of_the_traffic_as_control() -> None:
    t = T0 + 2 * HOUR
    eu = traffic(T0, T0 + 3 * HOUR, drop_at=t, labels={"region": "eu"}, seed=1)
    us = traffic(T0, T0 + 3 * HOUR, labels={"region": "us"}, seed=2)
    scoped = release("canary", t, scope={"region": "eu"})
    got = finals(run(engine(), with_release(iter([*eu, *us]), scoped)))
    rec = got[("canary", "orders")]
    assert rec.seasonal_reference == "control"
    assert rec.extra["scope"] == "region=eu"
    assert rec.judgement.verdict == "degraded"
    assert rec.judgement.change == pytest.approx(-0.5, abs=0.1)  # the eu drop, not diluted by us


def test_replay_sorts_by_event_time_and_reports_pending_releases() -> None:
    from stream_app.pipeline import Pipeline
    from stream_app.replay import ReplayOutcome, replay

    t = T0 + 2 * HOUR
    events = with_release(
        traffic(T0, T0 + 3 * HOUR, drop_at=t), release("a", t), release("late", T0 + 3 * HOUR - 60)
    )
    in_order = replay(events, Pipeline(CATALOG), ReplayOutcome())
    shuffled = list(events)
    random.Random(5).shuffle(shuffled)
    result = replay(shuffled, Pipeline(CATALOG), ReplayOutcome())
    assert result.verdicts == in_order.verdicts
    assert finals(result.verdicts)[("a", "orders")].judgement.verdict == "degraded"
    assert [r.id for r in result.pending] == ["late"]


def test_replay_matches_the_engine_fed_in_order() -> None:
    from stream_app.pipeline import Pipeline
    from stream_app.replay import ReplayOutcome, replay

    t = T0 + 2 * HOUR
    events = with_release(traffic(T0, T0 + 4 * HOUR, drop_at=t), release("a", t))
    worker = run(engine(real=True, interim=5), events)
    cli = replay(events, Pipeline(CATALOG), ReplayOutcome()).verdicts
    assert cli[: len(worker)] == worker


def test_the_bundled_catalog_judges_a_release() -> None:
    t = T0 + 30 * HOUR  # Wednesday 06:00, with Tuesday's history as the reference
    events = with_release(traffic(T0, t + 5 * HOUR, drop_at=t), release("r1", t))
    catalog = load_catalog(None)
    got = finals(run(engine(catalog, real=True), events))
    assert got[("r1", "orders")].judgement.verdict == "degraded"
    assert got[("r1", "revenue")].judgement.reason_code == "no-data"
    assert len({kpi for _, kpi in got}) == len(catalog.kpis)


def test_a_service_forgotten_and_restored_reads_its_windows_anew() -> None:
    t = T_SEASONAL
    events = with_release(orders_around(t, 1, 5, 6), release("r", t))
    cut = len(events) - 40  # some looks taken, the release still open
    first = engine(SEASONAL, interim=5)
    run(first, events[:cut])
    snap = first.snapshot("shop")
    first.forget("shop")
    assert not [k for k in first._fixed if k[0] == "shop"]  # nothing derived outlives the state
    first.restore("shop", snap)
    resumed = run(first, events[cut:])
    again = engine(SEASONAL, interim=5)
    whole = run(again, events)
    assert finals(resumed) == {k: v for k, v in finals(whole).items() if k in finals(resumed)}


def test_final_verdicts_do_not_depend_on_when_the_releases_were_read() -> None:
    """The worker reads the deployments topic ahead of (or behind) the telemetry topic."""
    from bench._recovery_harness import compact_scenario
    from stream_app import simulate
    from stream_app.pipeline import Pipeline

    events = list(simulate.generate(compact_scenario(4, 20_000, 4, 4)))
    rels = [e for e in events if isinstance(e, Release)]
    rest = [e for e in events if not isinstance(e, Release)]

    def final_records(evs: Sequence[object]) -> dict[tuple[str, str], VerdictRecord]:
        p = Pipeline(load_catalog())
        out: list[VerdictRecord] = []
        for ev in evs:
            out += p.handle(ev).records  # type: ignore[arg-type]
        out += p.close_input().records
        return finals(out)

    in_order = final_records(events)
    assert len(in_order) >= 20
    assert {r.judgement.verdict for r in in_order.values()} >= {"confounded"}
    assert final_records([*rels, *rest]) == in_order
