"""Release impact end to end on the real broker: worker == replay, /metrics, restart recovery."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer

from stream_app import codec, simulate
from stream_app.core.catalog import load_catalog
from stream_app.pipeline import Pipeline
from stream_app.producer import Sender, ensure_topics
from stream_app.replay import ReplayOutcome, replay
from stream_app.settings import Settings
from tests.integration.workerproc import WorkerProc, start_worker, topic_env

DAY = 86400.0
START = 1717480800.0  # Tuesday 06:00 UTC


def e2e_scenario(seed: int = 3) -> simulate.Scenario:
    """Two services, a day of history, then one bad and one neutral release (the last of each)."""
    day = START - 6 * 3600 + DAY
    return simulate.Scenario(
        seed=seed,
        start=START,
        # Until the releases' 4 h horizon has closed (plus the allowed lateness).
        duration_seconds=day + 14.5 * 3600 - START,
        services=(simulate.service_profile("checkout"), simulate.service_profile("search")),
        releases=(
            simulate.PlannedRelease(
                "checkout", day + 10 * 3600, "1.4.2", "deployed", {"conversion": -0.10}, label="bad"
            ),
            simulate.PlannedRelease("search", day + 10 * 3600 + 600, "2.7.0", label="neutral"),
        ),
        coarse_seconds=900,
    )


def _finals(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for v in records:
        key = (v["release_id"], v["kpi"])
        if v["phase"] == "final" and v["revision"] >= out.get(key, {}).get("revision", 0):
            out[key] = v
    return out


def _read_impact(
    consumer: Consumer, into: list[dict[str, Any]], want: int, timeout: float, worker: WorkerProc
) -> None:
    deadline = time.monotonic() + timeout
    while len(_finals(into)) < want and time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            into.append(orjson.loads(m.value()))


@pytest.fixture(scope="module")
def events() -> list[codec.Decoded]:
    return list(simulate.generate(e2e_scenario()))


def test_worker_verdicts_equal_replay_and_survive_a_restart(
    kafka_bootstrap: str, tmp_path: Path, events: list[codec.Decoded]
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix), "VALUELOOP_APP_ID": f"{prefix}-app"}
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        **{k[len("VALUELOOP_") :].lower(): v for k, v in env.items()},
    )
    ensure_topics(settings)
    topics = settings.topic_names()

    # The reference: the same core, offline, over the same events.
    expected = _finals(
        [
            orjson.loads(codec.encode_verdict(r))
            for r in replay(events, Pipeline(load_catalog()), ReplayOutcome()).verdicts
        ]
    )
    bad = next(e for e in events if isinstance(e, codec.Release) and e.service == "checkout")
    assert expected[(bad.id, "conversion")]["verdict"] == "degraded"

    # Phase A: everything up to the middle of the bad release's post window, then a restart.
    split = bad.time + 30 * 60
    first = [e for e in events if e.time < split]
    rest = [e for e in events if e.time >= split]
    sender = Sender(settings)

    def produce(batch: list[codec.Decoded]) -> None:
        for e in batch:
            sender.send(topics[codec.role_of(e)], codec.encode(e), codec.key_of(e))
        sender.flush(60)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{prefix}-reader",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topics["impact"]])
    seen: list[dict[str, Any]] = []
    worker = start_worker(kafka_bootstrap, env, tmp_path)
    try:
        produce(first)
        n_first = len(first)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = sum(
                worker.metric("valueloop_events_accepted_total", topic=t)
                for t in ("deployments", "telemetry")
            )
            if done >= n_first:
                break
            assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
            time.sleep(0.5)
        assert done >= n_first, f"worker consumed {done} of {n_first}"
        # Every event is in the engine; wait for a state flush after that (the timer flushes every
        # 2 s), then past the offset commit interval (1 s).
        worker.wait_for("valueloop_state_flushed_timestamp_seconds", time.time() + 0.5, timeout=60)
        time.sleep(2)
    finally:
        worker.stop()

    # Phase B: a new worker process must resume from the changelog, not from scratch.
    worker = start_worker(kafka_bootstrap, env, tmp_path)
    try:
        produce(rest)
        _read_impact(consumer, seen, len(expected), 240, worker)
        got = _finals(seen)
        state = [
            ln
            for ln in worker.metrics().splitlines()
            if ln.startswith(("valueloop_samples_total", "valueloop_state_restored"))
        ]
        assert set(got) == set(expected), state
        for key, want in expected.items():
            have = got[key]
            for field in (
                "verdict",
                "reason_code",
                "baseline_value",
                "post_value",
                "change",
                "ci_low",
                "ci_high",
                "p_value",
                "confounders",
            ):
                assert have[field] == want[field], (key, field, have[field], want[field], state)
        worker.wait_for(
            "valueloop_release_degraded",
            1,
            timeout=30,
            service="checkout",
            kpi="conversion",
            phase="final",
        )
        assert (
            worker.metric(
                "valueloop_release_degraded", service="search", kpi="conversion", phase="final"
            )
            == 0
        )
        assert (
            worker.metric(
                "valueloop_release_verdict", service="search", kpi="conversion", verdict="degraded"
            )
            == 0
        )
        recovered = worker.metric("valueloop_state_restored_services_total")
        assert recovered >= 1
    finally:
        worker.stop()
        consumer.close()
