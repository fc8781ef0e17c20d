"""Cardinality guard on a real worker: 100,000 distinct service names leave its memory and the
number of series on /metrics bounded; they are dead-lettered as too-many-services."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.producer import Sender, ensure_topics
from stream_app.settings import Settings
from tests.integration.workerproc import WorkerProc, start_worker, topic_env

pytestmark = pytest.mark.integration
LIMIT = 100
WARMUP = 2_000
FLOOD = 100_000
T0 = 1764064800.0


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _scrape(worker: WorkerProc) -> tuple[int, set[str]]:
    """(number of samples on /metrics, service label values on it)."""
    n, services = 0, set()
    for fam in text_string_to_metric_families(worker.metrics()):
        for s in fam.samples:
            n += 1
            if "service" in s.labels:
                services.add(s.labels["service"])
    return n, services


def _flood(sender: Sender, topic: str, first: int, stop: int) -> None:
    for i in range(first, stop):
        service = f"tenant-{i:06d}"
        value = orjson.dumps(
            {"service": service, "kpi": "orders", "time": T0 + i % 600, "value": 1.0}
        )
        sender.send(topic, value, key=service.encode())
    sender.flush(120)


def test_100k_distinct_services_keep_worker_memory_and_series_bounded(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {
        **topic_env(prefix),
        "VALUELOOP_APP_ID": f"{prefix}-app",
        "VALUELOOP_MAX_SERVICES": str(LIMIT),
    }
    topics = {k.removeprefix("VALUELOOP_").lower(): v for k, v in env.items() if "_TOPIC_" in k}
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, **topics)
    ensure_topics(settings)
    worker = start_worker(kafka_bootstrap, env, tmp_path)
    sender = Sender(settings)
    try:
        _flood(sender, settings.topic_telemetry, 0, WARMUP)
        refused = "valueloop_events_rejected_total"
        worker.wait_for(refused, WARMUP - LIMIT, timeout=120, reason="too-many-services")
        worker.wait_for("valueloop_state_snapshots_total", LIMIT, timeout=60)
        series_before, services_before = _scrape(worker)
        rss_before = _rss(worker.proc.pid)

        half = WARMUP + FLOOD // 2
        _flood(sender, settings.topic_telemetry, WARMUP, half)
        worker.wait_for(refused, half - LIMIT, timeout=600, reason="too-many-services")
        rss_half = _rss(worker.proc.pid)
        _flood(sender, settings.topic_telemetry, half, WARMUP + FLOOD)
        worker.wait_for(refused, WARMUP + FLOOD - LIMIT, timeout=600, reason="too-many-services")
        series_after, services_after = _scrape(worker)
        rss_after = _rss(worker.proc.pid)

        assert worker.metric("valueloop_events_accepted_total", topic="telemetry") == LIMIT
        assert worker.metric(refused, reason="too-many-services") == WARMUP + FLOOD - LIMIT
        assert len(services_before) == len(services_after) <= LIMIT
        assert services_after == services_before
        assert series_after == series_before, (series_before, series_after)
        print(
            f"\nworker, limit {LIMIT}: {series_after} samples on /metrics before and after "
            f"{FLOOD:,} more services; RSS {rss_before / 1e6:.1f} MB, "
            f"{rss_half / 1e6:.1f} MB after half, {rss_after / 1e6:.1f} MB after all"
        )
        # Unguarded, each service holds ~12 kB of engine state (tests/unit/test_cardinality.py):
        # 100,000 of them would be over a gigabyte. Guarded, buffers warm up, then memory is flat.
        assert rss_after - rss_before < 64_000_000, (rss_before, rss_after)
        assert rss_after - rss_half < 16_000_000, (rss_half, rss_after)
        assert worker.proc.poll() is None
    finally:
        worker.stop()
        del sender  # its librdkafka client goes now, not after the session's broker
