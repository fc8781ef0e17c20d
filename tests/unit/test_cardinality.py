"""Cardinality guard: 100,000 distinct service names leave memory and exposed series bounded."""

from __future__ import annotations

import gc
import resource
import tracemalloc
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stream_app.core.catalog import load_catalog
from stream_app.core.guard import Limits
from stream_app.events.model import Incident, KpiSample, Release, WorkflowEvent
from stream_app.metrics import Metrics
from stream_app.pipeline import Pipeline

T0 = 1764064800.0
LIMIT = 50


def edge(p: Pipeline, m: Metrics, event: KpiSample | Release | WorkflowEvent | Incident) -> str:
    """What the worker's intake does with a decoded event: the core, then the counters."""
    role = {KpiSample: "telemetry", Release: "deployments", WorkflowEvent: "workflow"}.get(
        type(event), "incidents"
    )
    step = p.handle(event)
    if step.rejected:
        m.rejected(role, step.outcome)
    else:
        m.accepted(role)
        for rec in step.records:
            m.observe_verdict(rec)
    return step.outcome


def events(i: int) -> list[KpiSample | Release | WorkflowEvent | Incident]:
    """Every kind of input for service number i (each creates state and series when admitted)."""
    service, t = f"svc-{i:06d}", T0 + (i % 600)
    out: list[KpiSample | Release | WorkflowEvent | Incident] = [
        KpiSample(service, "orders", t, 1.0, labels={"region": f"r{i % 3}"}, id=f"s-{i}")
    ]
    if i < 1000 or i % 10 == 0:
        out.append(Release(f"rel-{i}", service, f"1.{i}", t, "deployed", commits=(f"c{i}",)))
        out.append(WorkflowEvent(f"wf-{i}", t, service, f"item-{i}", "feature", "dev", "entered"))
    if i % 10 == 0:  # (DORA's report cost grows with services x incidents: fewer of them)
        out.append(Incident(f"inc-{i}", f"INC-{i}", t, service, "detected"))
    return out


def rss() -> int:
    """Resident memory of this process now (bytes)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * resource.getpagesize()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, in KiB on Linux


def series(m: Metrics) -> tuple[int, set[str]]:
    """(number of exposed samples, services and value streams named in labels) of /metrics."""
    n, names = 0, set()
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            n += 1
            names.update(v for k, v in s.labels.items() if k in ("service", "value_stream"))
    return n, names


def run(p: Pipeline, m: Metrics, first: int, stop: int) -> None:
    for i in range(first, stop):
        for ev in events(i):
            edge(p, m, ev)
        if i % 5000 == 0:  # the worker's timer: report gauges and histograms
            m.apply_samples(p.report_samples())
            m.observe_samples(p.drain_observations())
    m.apply_samples(p.report_samples())
    m.observe_samples(p.drain_observations())


def test_100k_distinct_services_keep_memory_and_series_bounded() -> None:
    p = Pipeline(load_catalog(), limits=Limits(max_services=LIMIT), clock=lambda: T0 + 3600)
    m = Metrics(CollectorRegistry(), max_services=LIMIT)
    run(p, m, 0, 5000)  # the limit is reached early; then the steady state
    gc.collect()
    after_5k = rss()
    series_5k, names_5k = series(m)
    run(p, m, 5000, 100_000)
    gc.collect()
    after_100k = rss()
    series_100k, names_100k = series(m)

    # Only the first LIMIT services got state and series; 95,000 more changed neither.
    assert len(p.guard) == len(p.engine.services()) == LIMIT
    assert len(names_100k) == LIMIT and names_100k == names_5k
    assert series_100k == series_5k
    growth = after_100k - after_5k
    # Unguarded, each service costs ~10 kB (next test): 95,000 of them would be ~1 GB.
    assert growth < 4_000_000, f"memory grew {growth:,} bytes over 95,000 more services"
    get = m.registry.get_sample_value
    sent = {"telemetry": 100_000, "deployments": 10_900, "workflow": 10_900, "incidents": 10_000}
    for role, n in sent.items():
        admitted = LIMIT if role != "incidents" else LIMIT // 10
        labels = {"topic": role, "reason": "too-many-services"}
        assert get("valueloop_events_rejected_total", labels) == n - admitted, role
    assert get("valueloop_events_accepted_total", {"topic": "telemetry"}) == LIMIT
    print(
        f"\n100k services, limit {LIMIT}: {series_100k} exposed samples, "
        f"{len(names_100k)} services in labels, RSS {after_5k / 1e6:.1f} MB after 5k services, "
        f"{after_100k / 1e6:.1f} MB after 100k (growth {growth / 1e3:.0f} kB)"
    )


def test_without_the_limit_the_same_input_grows_state_and_series() -> None:
    """The contrast that makes the bound meaningful: each admitted service costs state, series."""
    p = Pipeline(load_catalog(), limits=Limits(max_services=10**6), clock=lambda: T0 + 3600)
    m = Metrics(CollectorRegistry())
    run(p, m, 0, 500)
    gc.collect()
    series_before, _ = series(m)
    # Allocated bytes, not RSS: late in a long test session the heap reuses freed memory, so RSS
    # can stay flat while state grows (CI saw a 0-byte RSS delta here).
    tracemalloc.start()
    try:
        run(p, m, 500, 2500)
        gc.collect()
        grown, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    series_after, names = series(m)
    assert len(p.engine.services()) == 2500 and len(names) == 1000 + 150
    per_service = grown / 2000
    assert per_service > 2000, per_service
    assert series_after > series_before
    print(f"\nunguarded: {per_service:,.0f} allocated bytes per extra service")


def test_refused_input_creates_no_engine_state_and_a_moved_service_frees_its_room() -> None:
    p = Pipeline(load_catalog(), limits=Limits(max_services=1))
    assert p.handle(KpiSample("a", "orders", T0, 1.0)).outcome == "accepted"
    for i in range(1000):  # junk streams of new services take no room and create no state
        assert p.handle(KpiSample(f"junk-{i}", "bogus", T0, 1.0)).outcome == "unknown-stream"
    assert p.handle(KpiSample("b", "orders", T0, 1.0)).outcome == "too-many-services"
    assert p.engine.services() == ["a"] and len(p.guard) == 1
    p.forget_service("a")  # its partition moved to another worker
    assert p.handle(KpiSample("b", "orders", T0, 1.0)).outcome == "accepted"
    assert p.engine.services() == ["b"]


def test_metrics_never_create_series_beyond_the_service_limit() -> None:
    m = Metrics(CollectorRegistry(), max_services=2)
    for service in ("a", "b", "c"):
        m.observe_release(service, "1.0", T0)
    m.apply_samples([("valueloop_deployments_total", {"service": "d"}, 3.0)])
    _, names = series(m)
    assert names == {"a", "b"}
    assert m.registry.get_sample_value("valueloop_series_refused_total") == 2
