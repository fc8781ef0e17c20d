"""Nothing stalls the worker (real broker, real worker process).

- Telemetry messages the broker accepted but that are too large to re-produce (1.2 MB sent lz4
  compressed; 20 MB on a topic whose max.message.bytes was raised, larger than faust's fetch size
  even compressed) are dead-lettered as truncated copies with reason `oversized`, and the samples
  after them in the same partition are accepted.
- An intake stuck in its batch step (the test-only hook VALUELOOP_TEST_STALL_KEY) turns /health
  not-ready with a reason, shows on /metrics with honest lag, and SIGTERM still stops the worker
  cleanly within 10 s.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from stream_app.deadletter import TRUNCATED_VALUE_BYTES
from stream_app.producer import ensure_topics
from stream_app.settings import Settings
from tests.integration.workerproc import consume_all, start_worker, topic_env

pytestmark = pytest.mark.integration
T0 = 1764064800.0  # 2025-11-25T10:00:00Z
BIG = 30_000_000  # the telemetry topic's and the test producer's message size limit


def _sample(i: int, service: str = "s0", **over: object) -> bytes:
    return orjson.dumps(
        {"service": service, "kpi": "orders", "time": T0 + i, "value": 1.0, "id": f"{i}", **over}
    )


def _setup(bootstrap: str, extra: dict[str, str]) -> tuple[dict[str, str], Settings]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix), "VALUELOOP_APP_ID": f"{prefix}-app", **extra}
    topics = {k.removeprefix("VALUELOOP_").lower(): v for k, v in env.items() if "_TOPIC_" in k}
    settings = Settings(kafka_bootstrap_servers=bootstrap, **topics)
    ensure_topics(settings)
    return env, settings


def test_messages_too_large_to_reproduce_are_dead_lettered_truncated(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env, settings = _setup(kafka_bootstrap, {})
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    raise_limit = ConfigResource(
        "topic",
        settings.topic_telemetry,
        incremental_configs=[
            ConfigEntry("max.message.bytes", str(BIG), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for fut in admin.incremental_alter_configs([raise_limit]).values():
        fut.result(30)
    worker = start_worker(kafka_bootstrap, env, tmp_path)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "compression.type": "lz4", "message.max.bytes": BIG}
    )
    # 1.2 MB that lz4 shrinks to a few kB: the broker takes it under its 1 MB default.
    compressible = _sample(100, labels={"pad": "x" * 1_200_000})
    # 20 MB of hex digits of random bytes: lz4 (no entropy coding) barely shrinks it, so it is
    # also larger than faust's fetch size (consumer_max_fetch_size, 4 MiB) on the wire.
    incompressible = _sample(200, labels={"pad": os.urandom(10_000_000).hex()})
    assert len(compressible) > 1_000_000 and len(incompressible) > 20_000_000
    try:
        sent = [_sample(i) for i in range(50)]
        after_first = [_sample(i) for i in range(101, 151)]
        after_second = [_sample(i) for i in range(201, 251)]
        for value in [*sent, compressible, *after_first, incompressible, *after_second]:
            producer.produce(settings.topic_telemetry, key=b"s0", value=value)
        assert producer.flush(60) == 0

        # Every sample after the large ones, in the same partition, is accepted.
        good = len(sent) + len(after_first) + len(after_second)
        worker.wait_for("valueloop_events_accepted_total", good, timeout=120, topic="telemetry")
        rejected = worker.wait_for(
            "valueloop_events_rejected_total", 2, topic="telemetry", reason="oversized"
        )
        assert rejected == 2
        assert worker.metric("valueloop_deadletter_truncated_total") == 2

        dead = consume_all(kafka_bootstrap, settings.topic_deadletter, 2, timeout=60)
        assert len(dead) == 2
        for m, original in zip(dead, (compressible, incompressible), strict=True):
            h = dict(m.headers())  # type: ignore[attr-defined]
            assert h["valueloop.reason"] == b"oversized"
            assert h["valueloop.truncated"] == b"true"
            assert int(h["valueloop.original.size"]) == len(original)
            assert h["valueloop.original.sha256"].decode() == hashlib.sha256(original).hexdigest()
            assert h["valueloop.source.topic"].decode() == settings.topic_telemetry
            assert m.key() == b"s0"  # type: ignore[attr-defined]
            assert m.value() == original[:TRUNCATED_VALUE_BYTES]  # type: ignore[attr-defined]
        status, _ = worker.get("/health")
        assert status == 200
        worker.wait_series("valueloop_consumer_lag_messages", 0, topic="telemetry")
    finally:
        worker.stop()
        del producer


def test_a_stuck_intake_turns_health_not_ready_and_sigterm_still_stops_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # VALUELOOP_TEST_STALL_KEY is the test-only hook: the batch holding that key blocks for good.
    extra = {"VALUELOOP_STALL_SECONDS": "3", "VALUELOOP_TEST_STALL_KEY": "stall-me"}
    env, settings = _setup(kafka_bootstrap, extra)
    worker = start_worker(kafka_bootstrap, env, tmp_path)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    try:
        for i in range(20):
            producer.produce(settings.topic_telemetry, key=b"s0", value=_sample(i))
        producer.flush(30)
        worker.wait_for("valueloop_events_accepted_total", 20, topic="telemetry")
        worker.wait_series("valueloop_consumer_lag_messages", 0, topic="telemetry")
        assert worker.get("/health")[0] == 200

        for i in range(30):
            producer.produce(settings.topic_telemetry, key=b"stall-me", value=_sample(i, "x"))
        producer.flush(30)
        deadline = time.monotonic() + 60
        status, body = worker.get("/health")
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            status, body = worker.get("/health")
        assert status == 503, body
        health = orjson.loads(body)
        assert health["ready"] is False and health["broker_reachable"] is True
        assert "no progress" in health["reason"]
        [stuck] = health["stalled"]
        assert stuck["topic"] == settings.topic_telemetry and stuck["lag"] == 30
        assert stuck["seconds_since_progress"] >= 3
        assert worker.metric("valueloop_intake_stalled", topic="telemetry") == 1
        assert worker.metric("valueloop_consumer_lag_messages", topic="telemetry") == 30
        assert worker.metric("valueloop_intake_seconds_since_progress", topic="telemetry") >= 3

        started = time.monotonic()
        os.killpg(worker.proc.pid, signal.SIGTERM)
        code = worker.proc.wait(30)
        took = time.monotonic() - started
        assert took < 10, f"SIGTERM took {took:.1f} s\n{worker.tail()}"
        assert code == 0, worker.tail()
    finally:
        worker.stop()
        del producer
