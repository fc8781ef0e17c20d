"""Flow, DORA and ledger state survive a restart: snapshot per service, restore, go on identically.

The worker stores `Pipeline.snapshot_service` per service in its changelog table (with the input
offsets it covers) and restores every service of its partitions after a crash or a rebalance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from stream_app import simulate
from stream_app.codec import Decoded
from stream_app.core.catalog import load_catalog
from stream_app.core.dora import DoraTracker
from stream_app.core.flow import FlowTracker
from stream_app.core.ledger import parse_features
from stream_app.core.valuestream import load_valuestream
from stream_app.events.model import Release, WorkflowEvent
from stream_app.pipeline import Pipeline

FEATURES = """
[[feature]]
name = "one-page checkout"
service = "checkout"
version = "1.4.2"
kpi = "conversion"
direction = "up"
change = "3%"
"""
CHUNK = 5000


@pytest.fixture(scope="module")
def events() -> list[Decoded]:
    """The demo shop: releases, KPI samples, work items with a QA bottleneck, an incident."""
    return list(simulate.generate(simulate.demo_scenario()))


def pipeline() -> Pipeline:
    return Pipeline(load_catalog(), features=parse_features(FEATURES))


class Run:
    """A pipeline fed in batches, keeping what it emitted and observed."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.ledger: dict[tuple[Any, ...], Any] = {}
        self.finals: dict[tuple[str, str], str] = {}
        self.observed: list[tuple[str, tuple[tuple[str, str], ...], float]] = []

    def feed(self, evs: Sequence[Decoded]) -> None:
        for i in range(0, len(evs), CHUNK):
            batch = self.p.handle_many(evs[i : i + CHUNK])
            for e in batch.ledger:
                self.ledger[(e.release_id, e.item_id)] = e
            for r in batch.records:
                if r.phase == "final":
                    self.finals[(r.release_id, r.kpi)] = r.judgement.verdict
            self.observe()

    def observe(self) -> None:
        for name, labels, v in self.p.drain_observations():
            self.observed.append((name, tuple(sorted(labels.items())), v))


@pytest.fixture(scope="module")
def whole(events: list[Decoded]) -> Run:
    """A pipeline that saw every event, never stopped (read it, do not change it)."""
    run = Run(pipeline())
    run.feed(events)
    return run


def services(evs: Sequence[Decoded]) -> list[str]:
    return sorted({e.service for e in evs})


@pytest.mark.parametrize("cut", [0.6, 0.85])
def test_a_pipeline_restored_from_service_snapshots_ends_like_one_never_stopped(
    events: list[Decoded], whole: Run, cut: float
) -> None:
    k = int(len(events) * cut)
    before = Run(pipeline())
    before.feed(events[:k])
    snaps = {s: before.p.snapshot_service(s) for s in services(events)}
    after = Run(pipeline())
    for s, data in snaps.items():
        after.p.restore_service(s, data)
    # The restored state is the stored one, part for part.
    assert {s: after.p.snapshot_service(s) for s in snaps} == snaps
    after.feed(events[k:])

    assert whole.p.report_samples() == after.p.report_samples()
    assert whole.p.report() == after.p.report()
    ledger = {**before.ledger, **after.ledger}
    assert ledger == whole.ledger and ledger  # the ledger entries as published, latest per key
    assert {**before.finals, **after.finals} == whole.finals
    # Each finished item and first-deployed change is observed once over both processes.
    assert sorted(before.observed + after.observed) == sorted(whole.observed)
    rep = whole.p.report()
    assert rep is not None
    assert sum(r.deployments_total for r in rep.dora.values()) >= 5
    assert sum(sum(r.finished_total_by_type.values()) for r in rep.flow.values()) >= 10
    assert sum(r.failed_deployments for r in rep.dora.values()) >= 1


def test_a_pipeline_that_never_saw_a_service_snapshots_nothing_of_it() -> None:
    p, q = pipeline(), pipeline()
    q.restore_service("nobody", p.snapshot_service("nobody"))
    assert q.report() is None and q.engine.services() == []


def test_forgetting_a_service_drops_its_part_only(events: list[Decoded]) -> None:
    run = Run(pipeline())
    run.feed(events)
    names = services(events)
    gone, kept = names[0], names[1:]
    rep = run.p.report()
    assert rep is not None
    snap = run.p.snapshot_service(gone)
    run.p.forget_service(gone)
    after = run.p.report()
    assert after is not None
    assert gone not in after.dora and set(after.dora) == set(rep.dora) - {gone}
    assert all(after.dora[s] == rep.dora[s] for s in kept)
    run.p.restore_service(gone, snap)
    assert run.p.report() == rep


# ---- the trackers' own per-service parts


T0 = 1_700_000_000.0
H = 3600.0


def wf(
    eid: str, t: float, service: str, item: str, stage: str, action: Any, **kw: Any
) -> WorkflowEvent:
    return WorkflowEvent(eid, t, service, item, "feature", stage, action, **kw)


def product_events() -> list[WorkflowEvent | Release]:
    """One value stream over two services: items opened by one, moved on by the other."""
    return [
        wf("a1", T0, "checkout", "W1", "dev", "entered", source_type="workitem"),
        wf("a2", T0 + 2 * H, "checkout", "W1", "dev", "left", source_type="workitem"),
        wf("b1", T0 + 3 * H, "cart", "W1", "qa", "entered", source_type="workitem"),
        wf("b2", T0 + 5 * H, "cart", "W1", "qa", "left", commits=("c1",), source_type="workitem"),
        wf("b3", T0 + H, "cart", "W2", "dev", "entered", source_type="workitem"),
        Release("R1", "cart", "1", T0 + 6 * H, "deployed", commits=("c1",)),
    ]


def test_flow_parts_per_service_merge_into_the_whole() -> None:
    defn = dataclasses.replace(load_valuestream(), value_streams={"shop": ("checkout", "cart")})
    whole = FlowTracker(defn)
    for ev in product_events():
        if isinstance(ev, Release):
            whole.on_release(ev)
        else:
            whole.on_workflow(ev)
    assert whole.dirty() == {"checkout", "cart"}
    assert whole.item_service("shop", "W1") == "checkout"
    now = T0 + 10 * H
    ref = whole.snapshot(now, 30 * 86400.0)
    assert ref["shop"].finished == 1 and ref["shop"].open_items == 1

    merged = FlowTracker(defn)
    for s in ("cart", "checkout"):
        merged.restore_state(whole.snapshot_state((s,)), merge=True)
    assert merged.snapshot(now, 30 * 86400.0) == ref
    assert merged.release_cost("R1") == whole.release_cost("R1")
    assert not merged.dirty()

    merged.forget_services(("checkout",))
    part = merged.snapshot(now, 30 * 86400.0)["shop"]
    assert part.finished == 0 and part.open_items == 1  # W2, opened by cart, stays
    merged.restore_state(whole.snapshot_state(("checkout",)), merge=True)
    assert merged.snapshot(now, 30 * 86400.0) == ref


def test_dora_parts_per_service_merge_into_the_whole(events: list[Decoded], whole: Run) -> None:
    dora, now = whole.p.dora, whole.p.max_event_time
    merged = DoraTracker(load_valuestream())
    for s in services(events):
        merged.restore_state(dora.snapshot_state((s,)), merge=True)
    assert merged.report(now, 7 * 86400.0) == dora.report(now, 7 * 86400.0)
    assert merged.change_lead_times(now) == dora.change_lead_times(now)


def test_services_moved_to_two_workers_report_together_what_one_reported(
    events: list[Decoded], whole: Run
) -> None:
    # A rebalance splits the services over two workers: each restores the services of its
    # partitions, and together they report what the single worker did.
    names = services(events)
    mine = {names[0], names[2]}
    a, b = pipeline(), pipeline()
    for s in names:
        (a if s in mine else b).restore_service(s, whole.p.snapshot_service(s))
    ref = whole.p.report()
    ra, rb = a.report(), b.report()
    assert ref is not None and ra is not None and rb is not None
    assert ra.now == rb.now == ref.now
    assert {**ra.dora, **rb.dora} == ref.dora and set(ra.dora) == mine
    assert {**ra.flow, **rb.flow} == ref.flow
    assert sorted(ra.ledger + rb.ledger, key=repr) == sorted(ref.ledger, key=repr)
