"""Flow metrics: flow time, stage times, efficiency, load, velocity and the bottleneck."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

from stream_app import simulate
from stream_app.core.catalog import load_catalog
from stream_app.core.flow import FlowTracker, flow_metric_samples, quantile
from stream_app.core.valuestream import load_valuestream
from stream_app.events.model import ItemType, Release, WorkflowEvent
from stream_app.metrics import Metrics
from stream_app.pipeline import Pipeline

H = 3600.0
D = 86400.0
T0 = 1_700_000_000.0
_ids = itertools.count()


def wf(
    item: str,
    t: float,
    stage: str,
    action: str,
    *,
    source: str = "workitem",
    commits: tuple[str, ...] = (),
    item_type: ItemType | None = "feature",
    state: str | None = None,
    outcome: str | None = None,
    service: str = "shop",
) -> WorkflowEvent:
    return WorkflowEvent(
        id=f"ev-{next(_ids)}",
        time=t,
        service=service,
        item_id=item,
        item_type=item_type,
        stage=stage,
        action=action,  # type: ignore[arg-type]  # tests pass the literal as a plain str
        state=state,  # type: ignore[arg-type]
        source_type=source,
        commits=commits,
        outcome=outcome,
    )


def deploy(
    rid: str, t: float, commits: tuple[str, ...], environment: str = "production"
) -> Release:
    return Release(
        id=rid,
        service="shop",
        version=rid,
        time=t,
        kind="deployed",
        commits=commits,
        environment=environment,
    )


def item_story(i: int, start: float, qa_wait: float) -> list[WorkflowEvent | Release]:
    """One feature through the whole stream, from CDEvents and work-item events.

    Active: dev 6 h, review 2 h, build 0.5 h, test 1 h, qa 3 h = 12.5 h. Waiting: 1.5 h in front
    of / queued in build, ``qa_wait`` in waiting-for-qa, 2 h before the production release.
    """
    w, sha = f"W{i}", f"sha{i}"
    t = start
    qa = t + 11 * H + qa_wait
    return [
        wf(w, t - 5 * D, "backlog", "entered"),  # backlog: before flow, not counted
        # The change names the work item among its commits, which links it to W{i}.
        wf(f"C{i}", t, "dev", "created", source="change", commits=(sha, w), item_type=None),
        wf(f"C{i}", t + 6 * H, "review", "entered", source="change", item_type=None),
        wf(f"C{i}", t + 8 * H, "review", "merged", source="change", item_type=None),
        wf(f"P{i}", t + 9 * H, "ci", "queued", source="pipelinerun", commits=(sha,)),
        wf(f"P{i}", t + 9.5 * H, "ci", "started", source="pipelinerun"),
        wf(f"P{i}", t + 10 * H, "ci", "finished", source="pipelinerun"),
        wf(f"T{i}", t + 10 * H, "test", "started", source="testsuiterun", commits=(sha,)),
        wf(f"T{i}", t + 11 * H, "test", "finished", source="testsuiterun"),
        wf(w, t + 11 * H, "waiting-for-qa", "entered"),
        wf(w, qa, "qa", "entered"),
        wf(w, qa + 3 * H, "qa", "left"),
        deploy(f"R{i}", qa + 5 * H, (sha,)),
    ]


def feed(ft: FlowTracker, events: list[WorkflowEvent | Release]) -> None:
    for e in events:
        if isinstance(e, Release):
            ft.on_release(e)
        else:
            assert ft.on_workflow(e) == "accepted", e


def qa_scenario() -> list[WorkflowEvent | Release]:
    # Three features that wait 13, 14 and 15 days for QA: the test team's backlog.
    return [e for i in range(3) for e in item_story(i, T0 + i * D, (13 + i) * D)]


def test_quantile_interpolates_linearly_between_ranks() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert quantile([10.0, 19.0, 28.0, 37.0, 40.0], 0.85) == pytest.approx(38.2)
    assert quantile([7.0], 0.85) == 7.0


def test_items_waiting_two_weeks_for_qa_name_that_stage_as_the_bottleneck() -> None:
    ft = FlowTracker(load_valuestream())
    feed(ft, qa_scenario())
    r = ft.snapshot(T0 + 30 * D, 30 * D)["shop"]
    assert r.finished == 3
    b = r.bottleneck
    assert b is not None and b.stage == "waiting-for-qa"
    assert b.wait.p50 == 14 * D
    assert b.wait.p85 == pytest.approx(14.7 * D)
    waits = 3 * 1.5 * H + (13 + 14 + 15) * D + 3 * 2 * H
    assert b.wait_share == pytest.approx(42 * D / waits)
    assert r.wait_seconds == pytest.approx(waits)


def test_flow_time_efficiency_and_stage_times_match_the_hand_computed_story() -> None:
    ft = FlowTracker(load_valuestream())
    feed(ft, qa_scenario())
    r = ft.snapshot(T0 + 30 * D, 30 * D)["shop"]
    active = 12.5 * H
    flow = [active + 1.5 * H + (13 + i) * D + 2 * H for i in range(3)]  # backlog excluded
    assert r.flow_time is not None
    assert r.flow_time.p50 == pytest.approx(flow[1])
    assert r.flow_seconds == pytest.approx(sum(flow))
    assert r.active_seconds == pytest.approx(3 * active)
    assert r.efficiency == pytest.approx(3 * active / sum(flow))
    stages = {s.stage: s for s in r.stages}
    assert stages["dev"].active is not None and stages["dev"].active.p50 == 6 * H
    assert stages["review"].active_seconds == pytest.approx(3 * 2 * H)
    build = stages["build"]
    assert build.wait is not None and build.wait.p50 == pytest.approx(1.5 * H)
    assert build.active_seconds == pytest.approx(3 * 0.5 * H)
    assert stages["test"].active_seconds == pytest.approx(3 * H)
    assert stages["deploy"].wait_seconds == pytest.approx(3 * 2 * H)
    # The backlog is reported but is not part of flow time or the bottleneck.
    assert stages["backlog"].wait_seconds == pytest.approx(3 * 5 * D)
    assert not stages["backlog"].in_flow and stages["backlog"].wait_share is None


def test_single_item_efficiency_by_hand_and_ties_name_the_earlier_stage() -> None:
    ft = FlowTracker(load_valuestream())
    feed(
        ft,
        [
            wf("A", T0, "dev", "entered", commits=("a1",)),
            wf("A", T0 + 4 * H, "dev", "left"),
            wf("A", T0 + 6 * H, "review", "entered"),  # 2 h queue in front of review
            wf("A", T0 + 8 * H, "review", "left"),
            deploy("R", T0 + 10 * H, ("a1",)),  # 2 h waiting to deploy
        ],
    )
    r = ft.snapshot(T0 + D, D)["shop"]
    assert r.flow_time is not None and r.flow_time.p50 == 10 * H
    assert r.efficiency == pytest.approx(6 / 10)
    stages = {s.stage: s for s in r.stages}
    assert stages["review"].wait_seconds == 2 * H and stages["review"].active_seconds == 2 * H
    assert r.bottleneck is not None and r.bottleneck.stage == "review"
    assert r.bottleneck.wait_share == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_out_of_order_delivery_gives_the_same_report_as_in_order(seed: int) -> None:
    events = qa_scenario()
    in_order = FlowTracker(load_valuestream())
    feed(in_order, events)
    shuffled = events[:]
    # Releases may now come before their items, CI runs before their change, changes before
    # the work item they name.
    random.Random(seed).shuffle(shuffled)
    out_of_order = FlowTracker(load_valuestream())
    for e in shuffled:
        if isinstance(e, Release):
            out_of_order.on_release(e)
        else:
            out_of_order.on_workflow(e)
    now = T0 + 30 * D
    assert out_of_order.snapshot(now, 30 * D) == in_order.snapshot(now, 30 * D)
    for i in range(3):
        assert out_of_order.release_cost(f"R{i}") == in_order.release_cost(f"R{i}")
        assert in_order.release_cost(f"R{i}").item_ids == (f"W{i}",)


def test_cdevents_as_the_codec_normalises_them_move_a_change_through_the_stream() -> None:
    # Shapes from stream_app/events/workflow.py: change events all say stage "review"; updated
    # and reviewed are "started" with the CDEvent name as outcome; a pipeline's stage is its name.
    def cd(item: str, h: float, stage: str, action: str, **kw: object) -> WorkflowEvent:
        return wf(item, T0 + h * H, stage, action, item_type=None, **kw)  # type: ignore[arg-type]

    ft = FlowTracker(load_valuestream())
    feed(
        ft,
        [
            cd("C", 0, "review", "created", source="change", commits=("sha",)),
            cd("C", 2, "review", "started", source="change", outcome="updated"),  # stays in dev
            cd("C", 5, "review", "started", source="change", outcome="reviewed"),
            cd("C", 6, "review", "merged", source="change"),
            cd(
                "P",
                6.5,
                "ci-main",
                "queued",
                source="pipelinerun",
                state="waiting",
                commits=("sha",),
            ),
            cd("P", 7, "ci-main", "started", source="pipelinerun", state="active"),
            cd("P", 8, "ci-main", "finished", source="pipelinerun", outcome="success"),
            cd("pkg:oci/shop", 8, "artifact", "created", source="artifact", commits=("sha",)),
            cd("pkg:oci/shop", 8.2, "artifact", "published", source="artifact"),
            deploy("R", T0 + 9 * H, ("sha",)),
        ],
    )
    r = ft.snapshot(T0 + D, D)["shop"]
    stages = {s.stage: s for s in r.stages}
    assert stages["dev"].active_seconds == 5 * H
    assert stages["review"].active_seconds == 1 * H
    assert stages["build"].wait_seconds == pytest.approx(1 * H)
    assert stages["build"].active_seconds == 1 * H
    assert stages["deploy"].wait_seconds == pytest.approx(1 * H)
    assert r.efficiency == pytest.approx(7 / 9)
    assert ft.on_workflow(cd("C2", 0, "review", "created", source="change")) == "accepted"
    assert ft.on_workflow(
        cd("C2", 1, "review", "finished", source="change", outcome="abandoned")
    ) == ("dropped")


def test_repeated_stages_add_up_and_skipped_stages_have_no_visit() -> None:
    ft = FlowTracker(load_valuestream())
    feed(
        ft,
        [
            wf("B", T0, "dev", "entered", commits=("b1",)),
            wf("B", T0 + 2 * H, "review", "entered"),
            wf("B", T0 + 3 * H, "dev", "entered"),  # sent back to dev
            wf("B", T0 + 5 * H, "review", "entered"),
            wf("B", T0 + 6 * H, "qa", "entered"),  # skips build, test, waiting-for-qa
            deploy("R", T0 + 7 * H, ("b1",)),
        ],
    )
    stages = {s.stage: s for s in ft.snapshot(T0 + D, D)["shop"].stages}
    assert stages["dev"].active_seconds == 4 * H
    assert stages["review"].active_seconds == 2 * H
    assert stages["review"].items == 1
    assert stages["build"].items == 0 and stages["build"].wait is None
    assert stages["waiting-for-qa"].items == 0
    assert stages["qa"].active_seconds == 1 * H


def test_merged_ends_review_even_when_review_was_never_reported() -> None:
    ft = FlowTracker(load_valuestream())
    feed(
        ft,
        [
            wf("C", T0, "dev", "created", source="change", commits=("c1",)),
            wf("C", T0 + 3 * H, "review", "merged", source="change"),
            deploy("R", T0 + 4 * H, ("c1",)),
        ],
    )
    r = ft.snapshot(T0 + D, D)["shop"]
    stages = {s.stage: s for s in r.stages}
    assert stages["dev"].active_seconds == 3 * H
    assert stages["deploy"].wait_seconds == 1 * H
    assert r.efficiency == pytest.approx(0.75)


def test_flow_load_counts_items_where_they_are_at_now() -> None:
    ft = FlowTracker(load_valuestream())
    feed(
        ft,
        [
            wf("in-dev", T0, "dev", "entered"),
            wf("queued-for-review", T0, "dev", "entered"),
            wf("queued-for-review", T0 + H, "dev", "left"),  # between stages: review's queue
            wf("in-qa", T0, "qa", "entered", commits=("q1",)),
            deploy("R", T0 + 5 * H, ("q1",)),  # finished after `now`: still in qa at now
            wf("later", T0 + 10 * H, "dev", "entered"),  # not started at now
            wf("done", T0, "dev", "entered", commits=("d1",)),
            deploy("R0", T0 + H, ("d1",)),
        ],
    )
    r = ft.snapshot(T0 + 2 * H, D)["shop"]
    load = {s.stage: s.load for s in r.stages}
    assert load["dev"] == 1 and load["review"] == 1 and load["qa"] == 1
    assert r.open_items == 3


def test_velocity_and_distribution_count_items_finished_in_the_period() -> None:
    ft = FlowTracker(load_valuestream())
    kinds: list[ItemType] = ["feature", "feature", "defect", "debt"]
    for i, kind in enumerate(kinds):
        ft.on_workflow(wf(f"I{i}", T0, "dev", "entered", commits=(f"s{i}",), item_type=kind))
    ft.on_release(deploy("old", T0 + H, ("s0",)))  # before the period
    ft.on_release(deploy("new", T0 + 3 * D, ("s1", "s2", "s3")))
    r = ft.snapshot(T0 + 4 * D, 2 * D)["shop"]
    assert r.finished == 3
    assert r.velocity_per_day == pytest.approx(1.5)
    assert r.finished_by_type == {"feature": 1, "defect": 1, "risk": 0, "debt": 1}
    assert r.distribution["defect"] == pytest.approx(1 / 3)
    assert r.finished_total_by_type["feature"] == 2  # cumulative, for the counter


def test_a_deployment_to_staging_or_a_rollback_does_not_finish_work() -> None:
    ft = FlowTracker(load_valuestream())
    ft.on_workflow(wf("S", T0, "dev", "entered", commits=("x",)))
    assert ft.on_release(deploy("stg", T0 + H, ("x",), environment="staging")) == ()
    rb = dataclasses.replace(deploy("rb", T0 + H, ("x",)), kind="rolledback")
    assert ft.on_release(rb) == ()
    assert ft.on_release(deploy("prod", T0 + 2 * H, ("x",))) == ("S",)
    # A deployment that carries no known commit ships no items and costs nothing.
    assert ft.on_release(deploy("bare", T0 + 3 * H, ())) == ()
    assert ft.release_cost("bare").items == 0 and ft.release_cost("prod").items == 1


def test_bad_or_irrelevant_events_are_refused_with_a_reason() -> None:
    ft = FlowTracker(load_valuestream())
    first = wf("E", T0, "dev", "entered", commits=("e1",))
    assert ft.on_workflow(first) == "accepted"
    assert ft.on_workflow(first) == "duplicate"
    assert ft.on_workflow(wf("E", T0 + H, "nowhere", "entered")) == "unknown-stage"
    assert ft.on_workflow(wf("G", T0, "dev", "finished", outcome="abandoned")) == "unlinked"
    ft.on_release(deploy("R", T0 + 2 * H, ("e1",)))
    assert ft.on_workflow(wf("E", T0 + 3 * H, "qa", "entered")) == "after-finish"
    assert ft.on_workflow(wf("F", T0, "dev", "entered")) == "accepted"
    assert ft.on_workflow(wf("F", T0 + H, "dev", "finished", outcome="abandoned")) == "dropped"
    assert ft.snapshot(T0 + 4 * H, D)["shop"].open_items == 0


def test_ci_events_before_their_change_wait_and_apply_once_the_change_is_known() -> None:
    ft = FlowTracker(load_valuestream())
    assert ft.on_workflow(
        wf("P", T0 + H, "ci", "queued", source="pipelinerun", commits=("s",))
    ) == ("pending")
    assert ft.on_workflow(wf("P", T0 + 2 * H, "ci", "started", source="pipelinerun")) == "pending"
    ft.on_workflow(wf("C", T0, "dev", "created", source="change", commits=("s",)))
    ft.on_release(deploy("R", T0 + 3 * H, ("s",)))
    r = ft.snapshot(T0 + D, D)["shop"]
    build = {s.stage: s for s in r.stages}["build"]
    assert build.wait_seconds == 1 * H and build.active_seconds == 1 * H
    assert r.finished == 1


def test_ci_events_wait_for_their_item_only_for_the_pending_time() -> None:
    ft = FlowTracker(dataclasses.replace(load_valuestream(), pending_seconds=H))
    ft.on_workflow(wf("P", T0, "ci", "queued", source="pipelinerun", commits=("s",)))
    ft.snapshot(T0 + 2 * H, D)  # forgets the pending run
    ft.on_workflow(wf("C", T0 - H, "dev", "created", source="change", commits=("s",)))
    ft.on_release(deploy("R", T0 + 3 * H, ("s",)))
    build = {s.stage: s for s in ft.snapshot(T0 + D, D)["shop"].stages}["build"]
    assert build.items == 0


def test_a_done_stage_finishes_work_not_linked_to_a_deployment() -> None:
    ft = FlowTracker(load_valuestream())
    feed(ft, [wf("J", T0, "dev", "entered"), wf("J", T0 + 5 * H, "production", "entered")])
    r = ft.snapshot(T0 + D, D)["shop"]
    assert r.finished == 1 and r.flow_time is not None and r.flow_time.p50 == 5 * H


def test_open_item_cap_refuses_new_items_as_a_value() -> None:
    ft = FlowTracker(dataclasses.replace(load_valuestream(), max_open_items=2))
    assert ft.on_workflow(wf("a", T0, "dev", "entered", commits=("a",))) == "accepted"
    assert ft.on_workflow(wf("b", T0, "dev", "entered")) == "accepted"
    assert ft.on_workflow(wf("c", T0, "dev", "entered")) == "too-many-open-items"
    assert ft.on_workflow(wf("c", T0, "dev", "entered", service="other")) == "accepted"
    ft.on_release(deploy("R", T0 + H, ("a",)))  # finishing one frees a slot
    assert ft.on_workflow(wf("c", T0 + 2 * H, "dev", "entered")) == "accepted"


def test_snapshot_forgets_items_older_than_the_retention_but_keeps_counts() -> None:
    ft = FlowTracker(dataclasses.replace(load_valuestream(), retention_seconds=10 * D))
    feed(ft, [wf("old", T0, "dev", "entered", commits=("o",)), deploy("R", T0 + H, ("o",))])
    ft.on_workflow(wf("stale", T0, "dev", "entered"))  # open, never heard of again
    assert ft.prune(T0 + 5 * D) == 0
    r = ft.snapshot(T0 + 20 * D, 30 * D)["shop"]
    assert r.finished == 0 and r.open_items == 0
    assert r.finished_total_by_type["feature"] == 1
    assert ft.release_cost("R").items == 0


def test_state_round_trips_and_the_restored_tracker_continues_identically() -> None:
    events = qa_scenario()
    a = FlowTracker(load_valuestream())
    feed(a, events[:-5])
    b = FlowTracker(load_valuestream())
    b.restore_state(a.snapshot_state())
    assert b.snapshot_state() == a.snapshot_state()
    feed(a, events[-5:])
    feed(b, events[-5:])
    now = T0 + 30 * D
    assert b.snapshot(now, 30 * D) == a.snapshot(now, 30 * D)
    assert b.release_cost("R2") == a.release_cost("R2")
    with pytest.raises(ValueError, match="version"):
        b.restore_state(b"{}")


def test_release_cost_sums_the_active_time_of_the_items_it_shipped() -> None:
    ft = FlowTracker(load_valuestream())
    feed(ft, qa_scenario())
    cost = ft.release_cost("R1")
    assert cost.items == 1 and cost.item_ids == ("W1",)
    assert cost.active_seconds == pytest.approx(12.5 * H)
    assert cost.flow_seconds == pytest.approx(12.5 * H + 3.5 * H + 14 * D)
    assert ft.item_release("shop", "W1") == "R1"


METRIC_ATTR = {
    "valueloop_flow_time_seconds": "flow_time",
    "valueloop_stage_active_seconds": "stage_active",
    "valueloop_stage_wait_seconds": "stage_wait",
    "valueloop_flow_efficiency_ratio": "flow_efficiency",
    "valueloop_flow_load_items": "flow_load",
    "valueloop_flow_items_finished_total": "flow_finished",
    "valueloop_flow_distribution_ratio": "flow_distribution",
    "valueloop_bottleneck_stage": "bottleneck",
    "valueloop_bottleneck_wait_share_ratio": "bottleneck_wait_share",
}


def test_metric_samples_fit_the_exported_metric_set() -> None:
    ft = FlowTracker(load_valuestream())
    feed(ft, qa_scenario())
    samples = flow_metric_samples(ft.snapshot(T0 + 30 * D, 30 * D))
    m = Metrics(CollectorRegistry())
    for name, labels, value in samples:
        metric = getattr(m, METRIC_ATTR[name])
        if name.endswith("_total"):
            metric.labels(**labels).inc(value)
        else:
            metric.labels(**labels).set(value)
        assert m.registry.get_sample_value(name, labels) == value
    assert {n for n, _, _ in samples} == set(METRIC_ATTR)
    get = m.registry.get_sample_value
    assert (
        get("valueloop_bottleneck_stage", {"value_stream": "shop", "stage": "waiting-for-qa"}) == 1
    )
    assert get("valueloop_bottleneck_stage", {"value_stream": "shop", "stage": "qa"}) == 0
    assert (
        get("valueloop_flow_items_finished_total", {"value_stream": "shop", "item_type": "feature"})
        == 3
    )


# ---- a simulated value stream with a known injected delay

SIM_START = 1_717_200_000.0  # a whole minute


def injected_plan(slow: str) -> simulate.WorkflowPlan:
    """Stages of known mean length; ``slow`` is a waiting stage where items sit for two days."""
    means = {"dev": 300.0, "review": 60.0, "waiting-for-qa": 120.0, "qa": 90.0, "deploy": 40.0}
    means[slow] = 2 * 1440.0
    return simulate.WorkflowPlan(
        items_per_release=3.0,
        wip_items=4,
        stages=(
            simulate.Stage("backlog", "waiting", 600.0),  # before flow start: not flow time
            simulate.Stage("dev", "active", means["dev"]),
            simulate.Stage("review", "active", means["review"]),
            simulate.Stage("waiting-for-qa", "waiting", means["waiting-for-qa"]),
            simulate.Stage("qa", "active", means["qa"]),
            simulate.Stage("deploy", "waiting" if slow == "deploy" else "active", means["deploy"]),
        ),
        duration_sigma=0.3,
    )


@pytest.mark.parametrize("slow", ["waiting-for-qa", "deploy"])
def test_simulated_stream_names_the_delayed_stage_and_its_active_wait_split(slow: str) -> None:
    plan = injected_plan(slow)
    days = 40
    scenario = simulate.Scenario(
        seed=11,
        start=SIM_START,
        duration_seconds=days * D,
        services=(simulate.service_profile("shop"),),
        # A deployment every 4 hours after the first 5 days (earlier items would start too early).
        releases=tuple(
            simulate.PlannedRelease("shop", SIM_START + 5 * D + k * 4 * H, f"1.{k}.0")
            for k in range(int((days - 5) * 6) - 1)
        ),
        workflow=plan,
    )
    ft = FlowTracker(load_valuestream())
    for ev in simulate.planned_events(scenario):
        if isinstance(ev, Release):
            ft.on_release(ev)
        elif isinstance(ev, WorkflowEvent):
            assert ft.on_workflow(ev) == "accepted", ev
    r = ft.snapshot(scenario.end, scenario.duration_seconds)["shop"]
    # The injected split: mean active and waiting minutes of the flow stages (dev onwards).
    flow_stages = plan.stages[1:]
    active = sum(s.mean_minutes for s in flow_stages if s.state == "active")
    total = sum(s.mean_minutes for s in flow_stages)
    assert r.finished > 300  # enough items for the means to show
    assert r.bottleneck is not None and r.bottleneck.stage == slow == plan.bottleneck
    assert r.efficiency is not None
    assert abs(r.efficiency - active / total) < 0.01, (r.efficiency, active / total)
    # Items sit in the delayed stage about the injected two days (p50 of a lognormal < mean).
    assert r.bottleneck.wait.p50 == pytest.approx(2 * D, rel=0.1)
    assert r.open_items == plan.wip_items


def test_histograms_observe_each_finished_item_and_change_once() -> None:
    p = Pipeline(load_catalog())
    for e in qa_scenario():
        p.handle(e)
    obs = p.drain_observations(T0 + 30 * D)
    flow = sorted(v for n, _, v in obs if n == "valueloop_item_flow_time_seconds")
    assert flow == pytest.approx([12.5 * H + 1.5 * H + (13 + i) * D + 2 * H for i in range(3)])
    qa_wait = sorted(
        v
        for n, labels, v in obs
        if n == "valueloop_item_stage_wait_seconds" and labels["stage"] == "waiting-for-qa"
    )
    assert qa_wait == [13 * D, 14 * D, 15 * D]
    # Lead time: each change from its first commit (change created) to its deployment.
    leads = [v for n, _, v in obs if n == "valueloop_change_lead_time_seconds"]
    assert leads == pytest.approx([11 * H + (13 + i) * D + 5 * H for i in range(3)])
    assert p.drain_observations(T0 + 30 * D) == []  # observed once, never again

    m = Metrics(CollectorRegistry())
    m.observe_samples(obs)
    get = m.registry.get_sample_value
    flow_labels = {"value_stream": "shop", "item_type": "feature"}
    assert get("valueloop_item_flow_time_seconds_count", flow_labels) == 3
    assert get("valueloop_item_flow_time_seconds_sum", flow_labels) == pytest.approx(sum(flow))
    # Two weeks of waiting falls in the buckets above a week, not below.
    week = {"value_stream": "shop", "stage": "waiting-for-qa", "le": floatToGoString(7 * D)}
    assert get("valueloop_item_stage_wait_seconds_bucket", week) == 0
    month = {**week, "le": floatToGoString(30 * D)}
    assert get("valueloop_item_stage_wait_seconds_bucket", month) == 3
