"""Flow, DORA and the value ledger end to end on the real broker: the worker equals replay."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_app import codec, simulate
from stream_app.core.catalog import load_catalog
from stream_app.core.ledger import load_features
from stream_app.pipeline import MetricSample, Pipeline
from stream_app.producer import Sender, ensure_topics
from stream_app.replay import ReplayOutcome, replay
from stream_app.settings import Settings
from tests.integration.test_impact_e2e import DAY, START, e2e_scenario
from tests.integration.workerproc import WorkerProc, consume_all, start_worker, topic_env

BAD = START - 6 * 3600 + DAY + 10 * 3600  # the bad checkout release of e2e_scenario
FEATURES = """
[[feature]]
name = "one-page checkout"
service = "checkout"
version = "1.4.2"
kpi = "conversion"
direction = "up"
change = "3%"
"""


def flow_scenario() -> simulate.Scenario:
    """The release-impact scenario plus work items, an incident and a rollback of the bad release.

    Items wait ~10 h for QA (the simulator's injected bottleneck, "waiting-for-qa"); the bad
    checkout release degrades conversion, causes an incident and is rolled back 90 minutes later.
    """
    sc = e2e_scenario()
    return dataclasses.replace(
        sc,
        releases=(
            *sc.releases,
            simulate.PlannedRelease("checkout", BAD + 90 * 60, "1.4.1", "rolledback"),
        ),
        incidents=(
            simulate.PlannedIncident(
                "checkout", detected=BAD + 35 * 60, resolved=BAD + 80 * 60, release=0
            ),
        ),
        workflow=simulate.WorkflowPlan(items_per_release=4, wip_items=3),
    )


def scraped(
    worker: WorkerProc, names: set[str]
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The worker's current samples of the given metric names."""
    out = {}
    for fam in text_string_to_metric_families(worker.metrics()):
        for s in fam.samples:
            if s.name in names:
                out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def keyed(samples: list[MetricSample]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(n, frozenset(labels.items())): v for n, labels, v in samples}


def test_worker_flow_and_dora_metrics_equal_replay(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    features = tmp_path / "features.toml"
    features.write_text(FEATURES, encoding="utf-8")
    env = {
        **topic_env(prefix),
        "VALUELOOP_TOPIC_LEDGER": f"{prefix}.ledger",
        "VALUELOOP_FEATURES_FILE": str(features),
        "VALUELOOP_APP_ID": f"{prefix}-app",
    }
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        **{k[len("VALUELOOP_") :].lower(): v for k, v in env.items()},
    )
    ensure_topics(settings)
    topics = settings.topic_names()
    sc = flow_scenario()
    events = list(simulate.generate(sc))
    assert sum(isinstance(e, codec.WorkflowEvent) for e in events) > 20

    # The reference: replay's report as of the last event time, the worker's default `now`.
    ref = replay(
        events, Pipeline(load_catalog(), features=load_features(features)), ReplayOutcome()
    )
    assert ref.reports is not None and ref.reports.now == max(e.time for e in events)
    want = keyed(ref.report)
    checkout = ref.reports.dora["checkout"]
    assert checkout.failures_by_cause == {"incident": 1, "rollback": 1, "degraded-kpi": 1}
    assert checkout.change_failure_rate == 1.0
    for vs in ("checkout", "search"):
        neck = ref.reports.flow[vs].bottleneck
        assert neck is not None and neck.stage == sc.workflow.bottleneck  # type: ignore[union-attr]

    worker = start_worker(kafka_bootstrap, env, tmp_path)
    try:
        sender = Sender(settings)

        def produce(batch: list[codec.Decoded]) -> None:
            for e in batch:
                sender.send(topics[codec.role_of(e)], codec.encode(e), codec.key_of(e))
            sender.flush(60)

        # Work happens before its release: the work-item events are in before the deployments.
        # (Histograms observe an item once, when it is first seen finished; the gauges would
        # agree in any order, a histogram only when the item's events precede its release.)
        work = [e for e in events if isinstance(e, codec.WorkflowEvent)]
        produce(work)
        worker.wait_for("valueloop_events_accepted_total", len(work), topic="workflow")
        produce([e for e in events if not isinstance(e, codec.WorkflowEvent)])
        # The degraded verdict is the last thing the worker can know: wait for it to count.
        worker.wait_for(
            "valueloop_deployment_failures_total",
            1,
            timeout=240,
            service="checkout",
            cause="degraded-kpi",
        )
        names = {n for n, _, _ in ref.report}
        got: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = scraped(worker, names)
            if got.keys() == want.keys() and all(
                got[k] == pytest.approx(v, rel=1e-9, abs=1e-9) for k, v in want.items()
            ):
                break
            time.sleep(1)  # the report timer runs every 2 s
        missing = sorted(str(k) for k in want.keys() - got.keys())
        extra = sorted(str(k) for k in got.keys() - want.keys())
        assert not missing and not extra, (missing, extra)
        diff = {str(k): (got[k], v) for k, v in want.items() if got[k] != pytest.approx(v)}
        assert not diff, diff

        # What a dashboard shows: the injected bottleneck, DORA counters and rates.
        for vs in ("checkout", "search"):
            assert (
                worker.metric("valueloop_bottleneck_stage", value_stream=vs, stage="waiting-for-qa")
                == 1
            )
            assert worker.metric("valueloop_bottleneck_stage", value_stream=vs, stage="qa") == 0
        assert worker.metric("valueloop_deployments_total", service="checkout") == 1
        assert worker.metric("valueloop_deployments_total", service="search") == 1
        assert worker.metric("valueloop_change_failure_ratio", service="checkout") == 1.0
        assert worker.metric("valueloop_change_failure_ratio", service="search") == 0.0
        for cause in ("incident", "rollback"):
            assert (
                worker.metric(
                    "valueloop_deployment_failures_total", service="checkout", cause=cause
                )
                == 1
            )
        assert worker.metric(
            "valueloop_recovery_time_seconds", service="checkout", percentile="0.5"
        ) == pytest.approx(80 * 60)
        assert worker.metric("valueloop_flow_efficiency_ratio", value_stream="checkout") > 0

        # Histograms: each finished item, stage visit and change observed once, as in replay.
        hist: dict[tuple[str, frozenset[tuple[str, str]]], list[float]] = {}
        for n, labels, v in ref.observations:
            hist.setdefault((n, frozenset(labels.items())), []).append(v)
        assert any(n == "valueloop_change_lead_time_seconds" for n, _ in hist)
        counted = scraped(worker, {f"{n}_count" for n, _ in hist} | {f"{n}_sum" for n, _ in hist})
        for (n, labels), values in hist.items():
            assert counted[(f"{n}_count", labels)] == len(values), (n, labels)
            assert counted[(f"{n}_sum", labels)] == pytest.approx(sum(values)), (n, labels)

        # The value ledger: the bet on 1.4.2 went the other way, on the topic and in /metrics.
        bad = sc.release_id(0)
        want_entry = [e for e in ref.ledger if e.release_id == bad][-1]
        assert want_entry.outcome == "went-the-other-way" and want_entry.cost.items > 0
        n_published = worker.metric("valueloop_ledger_entries_total", kind="release")
        assert n_published >= 1
        msgs: list[Any] = consume_all(kafka_bootstrap, f"{prefix}.ledger", int(n_published))
        published = [orjson.loads(m.value()) for m in msgs]
        entry = [d for d in published if d["release_id"] == bad][-1]
        assert entry["outcome"] == "went-the-other-way" and entry["degraded"] is True
        assert entry["expectations"][0]["kpi"] == "conversion"
        assert entry["cost"]["items"] == want_entry.cost.items
        assert entry["cost"]["active_seconds"] == pytest.approx(want_entry.cost.active_seconds)
        labels = {"service": "checkout", "outcome": "went-the-other-way"}
        assert worker.metric("valueloop_ledger_releases", **labels) == 1
        assert worker.metric("valueloop_ledger_cost_seconds", **labels) == pytest.approx(
            want_entry.cost.active_seconds
        )
    finally:
        worker.stop()
