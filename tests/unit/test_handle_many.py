"""`Pipeline.handle_many` gives exactly what `handle` gives one event at a time, faster."""

from __future__ import annotations

import random

import pytest

from stream_app import simulate
from stream_app.codec import Decoded
from stream_app.core.catalog import Catalog, load_catalog
from stream_app.core.guard import Limits
from stream_app.events.model import KpiSample
from stream_app.pipeline import Pipeline, Step

DAY = 86400.0
START = 1717480800.0  # Tuesday 06:00 UTC


def scenario_events() -> list[Decoded]:
    """Two services, three hours of history, then releases (one bad, a scoped one, an overlapping
    pair), workflow items and an incident; plus samples the core or its guard refuses."""
    t = START + 3 * 3600
    sc = simulate.Scenario(
        seed=4,
        start=START,
        duration_seconds=9 * 3600,
        services=(simulate.service_profile("checkout"), simulate.service_profile("search")),
        releases=(
            simulate.PlannedRelease("checkout", t, "1.4.2", "deployed", {"conversion": -0.10}),
            simulate.PlannedRelease("checkout", t + 1200, "1.4.3"),
            simulate.PlannedRelease(
                "search", t + 3600, "2.7.0", scope={"region": "eu"}, label="scoped"
            ),
            simulate.PlannedRelease("search", t + 3 * 3600, "2.7.1"),
        ),
        incidents=(simulate.PlannedIncident("checkout", t + 600, t + 3600, 0),),
        workflow=simulate.WorkflowPlan(),
    )
    events: list[Decoded] = sorted(simulate.generate(sc), key=lambda e: e.time)
    rng = random.Random(1)
    odd: list[tuple[int, Decoded]] = []
    for _ in range(600):
        at = rng.randrange(len(events))
        t = events[at].time
        kind = rng.randrange(10)
        if kind == 0:  # late: far behind the newest event time
            odd.append((at, KpiSample("checkout", "orders", t - 3600, 1.0)))
        elif kind == 1:
            odd.append((at, KpiSample("no-such-service", "orders", t, 1.0)))
        elif kind == 2:
            odd.append((at, KpiSample("search", "no-such-stream", t, 1.0)))
        elif kind == 3:
            odd.append((at, KpiSample("search", "orders", t, 1.0, 0.0)))  # value without count
        elif kind == 4:  # a fresh label value each time: the 33rd one is refused
            odd.append((at, KpiSample("search", "sessions", t, 1.0, 1.0, {"version": str(at)})))
        elif kind == 5:
            odd.append((at, KpiSample("checkout", "sessions", t, 0.0, 0.0)))  # an empty period
        elif kind == 6:  # a producer retry: the second one is a duplicate
            sample = KpiSample("search", "orders", t, 1.0, 1.0, {}, f"id-{at}")
            odd += [(at, sample), (at, sample)]
        elif kind == 7:
            odd.append((at, KpiSample("checkout", "orders", 1.0, 1.0)))  # time in the past
        elif kind == 8:
            odd.append((at, KpiSample(f"svc-{at % 3}", "orders", t, 1.0)))  # too many services
        else:
            odd.append((at, KpiSample("search", "orders", t + 10 * DAY, 1.0)))  # in the future
    for at, ev in sorted(odd, key=lambda x: -x[0]):
        events.insert(at, ev)
    return events


def pipeline(catalog: Catalog) -> Pipeline:
    """A pipeline with small guard limits and a fixed clock, so the guard refuses some events."""
    return Pipeline(catalog, limits=Limits(max_services=3), clock=lambda: START + 3 * DAY)


@pytest.fixture(scope="module")
def events() -> list[Decoded]:
    return scenario_events()


def test_handle_many_equals_handle_one_by_one(events: list[Decoded]) -> None:
    catalog = load_catalog()
    one, many = pipeline(catalog), pipeline(catalog)
    expected = [one.handle(e) for e in events]
    got = []
    rng = random.Random(2)
    i = 0
    while i < len(events):  # batches of every size, split anywhere
        n = rng.choice((1, 2, 7, 100, 1000, 5000))
        got.extend(many.handle_many(events[i : i + n]).steps())
        i += n
    assert len(got) == len(expected)
    outcomes = {s.outcome for s in expected}
    assert {"accepted", "late", "unknown-stream", "invalid-value"} <= outcomes
    assert {"too-many-label-values", "duplicate", "time-in-past", "time-in-future"} <= outcomes
    assert "too-many-services" in outcomes
    assert sum(len(s.records) for s in expected) > 20
    assert any(s.ledger for s in expected)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert a == b, (k, events[k])
    # Same state afterwards: snapshots, dirty services, reports and what is still pending.
    assert one.engine.services() == many.engine.services()
    for service in one.engine.services():
        assert one.engine.snapshot(service) == many.engine.snapshot(service)
    assert one.engine.dirty_services() == many.engine.dirty_services()
    assert one.max_event_time == many.max_event_time
    assert one.report() == many.report()
    assert one.close_input() == many.close_input()


def test_on_admit_sees_what_the_guard_lets_in_and_admit_is_not_repeated(
    events: list[Decoded],
) -> None:
    catalog = load_catalog()
    one, many = pipeline(catalog), pipeline(catalog)
    # The edge's pattern one by one: admit, load the service's state, handle.
    expected: list[Step] = []
    admitted: list[Decoded] = []
    for e in events:
        refused = one.admit(e)
        if refused is None:
            admitted.append(e)
        expected.append(refused or one.handle(e))
    seen: list[Decoded] = []
    got: list[Step] = []
    for lo in range(0, len(events), 3000):
        batch = events[lo : lo + 3000]
        # The first event of a batch was let in with `admit` already: not checked again.
        refused = many.admit(batch[0])
        if refused is not None:
            got.append(refused)
        else:
            seen.append(batch[0])
        got.extend(many.handle_many(batch[1:] if refused else batch, on_admit=seen.append).steps())
    assert got == expected
    assert [id(e) for e in seen] == [id(e) for e in admitted]
    assert len(admitted) < len(events)


def test_batch_step_views(events: list[Decoded]) -> None:
    catalog = load_catalog()
    batch = pipeline(catalog).handle_many(events)
    steps = pipeline(catalog).handle_many(events).steps()
    assert batch.records == [r for s in steps for r in s.records]
    assert batch.ledger == [e for s in steps for e in s.ledger]
    assert batch.rejected() == [i for i, s in enumerate(steps) if s.rejected]
    assert [o for o in batch.outcomes] == [s.outcome for s in steps]
