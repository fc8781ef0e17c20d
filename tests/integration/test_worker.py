"""The worker end to end on the real broker: emit, /metrics, dead letters, keeps consuming."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from stream_app.events import format_timestamp
from tests.integration.workerproc import consume_all, start_worker, topic_env

pytestmark = pytest.mark.integration


def _cli(bootstrap: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_app", *args],
        env={**os.environ, **env, "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_emit_is_accepted_and_bad_messages_are_dead_lettered(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {
        **topic_env(prefix),
        "VALUELOOP_TOPIC_LEDGER": f"{prefix}.ledger",
        "VALUELOOP_APP_ID": f"{prefix}-app",
    }
    ensured = _cli(kafka_bootstrap, env, "topics", "ensure")
    assert ensured.returncode == 0, ensured.stderr
    # five inputs (OTLP); impact, dead-letter, ledger; releases forwarded to products
    assert ensured.stdout.count("created") == 9
    again = _cli(kafka_bootstrap, env, "topics", "ensure")
    assert again.returncode == 0 and again.stdout.count("exists") == 9

    worker = start_worker(kafka_bootstrap, env, tmp_path)
    try:
        sent = _cli(
            kafka_bootstrap,
            env,
            "emit",
            "deployment",
            "--service",
            "checkout",
            "--version",
            "1.4.2",
            "--commit",
            "abc123",
        )
        assert sent.returncode == 0, sent.stderr
        worker.wait_for("valueloop_events_accepted_total", 1, topic="deployments")

        p = Producer({"bootstrap.servers": kafka_bootstrap})
        dep = f"{prefix}.deployments"
        p.produce(dep, key=b"checkout", value=b"this is not json {")
        p.produce(
            dep,
            key=b"checkout",
            value=orjson.dumps(
                {
                    "context": {
                        "version": "0.4.1",
                        "id": "x",
                        "source": "/ci",
                        "type": "dev.cdevents.service.deployed.0.2.0",
                        "timestamp": "nope",
                    },
                    "subject": {"id": "checkout", "content": {}},
                }
            ),
        )
        p.produce(
            dep,
            key=b"checkout",
            value=orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": "u1",
                    "source": "/x",
                    "type": "com.example.unknown",
                    "data": {},
                }
            ),
        )
        p.flush(10)

        dead = consume_all(kafka_bootstrap, f"{prefix}.deadletter", 3)
        assert len(dead) == 3
        reasons = []
        for m in dead:
            h = dict(m.headers())  # type: ignore[attr-defined]
            assert h["valueloop.source.topic"] == dep.encode()
            assert h["valueloop.source.partition"].isdigit()
            assert h["valueloop.source.offset"].isdigit()
            reasons.append(h["valueloop.reason"].decode())
        assert reasons[0] == "not-json"
        assert reasons[1] == "schema-invalid"
        assert reasons[2] == "unknown-type"
        assert dead[0].value() == b"this is not json {"  # type: ignore[attr-defined]
        worker.wait_for(
            "valueloop_events_rejected_total", 1, topic="deployments", reason="not-json"
        )

        # Still consuming after bad input.
        again_sent = _cli(
            kafka_bootstrap,
            env,
            "emit",
            "deployment",
            "--service",
            "search",
            "--version",
            "2.0.0",
            "--form",
            "binary",
        )
        assert again_sent.returncode == 0, again_sent.stderr
        worker.wait_for("valueloop_events_accepted_total", 2, topic="deployments")
        assert worker.proc.poll() is None
        # Everything produced has been read: the exported consumer lag is there and at zero.
        # The gauge is set by a timer: wait for it to be exported (and at zero), never assume it is.
        worker.wait_series("valueloop_consumer_lag_messages", 0, topic="deployments")
        # The standard process series are on the worker's own registry too.
        assert worker.metric("process_resident_memory_bytes") > 0

        # CDEvents 0.4.0 as a producer sends them: the change names no service (its repository
        # is `shop-repo`), the key does; the deployment shares its chain_id: a lead time for shop.
        now = time.time()
        merged = {
            "context": {
                "version": "0.4.0",
                "id": f"{prefix}-merged",
                "chain_id": f"{prefix}-chain",
                "source": "/scm",
                "type": "dev.cdevents.change.merged.0.2.0",
                "timestamp": format_timestamp(now - 7200),
            },
            "subject": {
                "id": "PR-1",
                "type": "change",
                "content": {"repository": {"id": "acme/shop-repo"}},
            },
        }
        deployed = {
            "context": {
                "version": "0.4.0",
                "id": f"{prefix}-deployed",
                "chain_id": f"{prefix}-chain",
                "source": "/cd",
                "type": "dev.cdevents.service.deployed.0.2.0",
                "timestamp": format_timestamp(now - 3600),
            },
            "subject": {
                "id": "service/shop",
                "type": "service",
                "content": {
                    "environment": {"id": "production"},
                    "artifactId": "pkg:oci/shop@v1.0.0",
                },
            },
        }
        p.produce(f"{prefix}.workflow", key=b"shop", value=orjson.dumps(merged))
        p.flush(10)
        worker.wait_for("valueloop_events_accepted_total", 1, topic="workflow")
        p.produce(dep, key=b"shop", value=orjson.dumps(deployed))
        p.flush(10)
        worker.wait_for("valueloop_change_lead_time_seconds_count", 1, service="shop")
        assert worker.metric("valueloop_change_lead_time_seconds_sum", service="shop") == 3600
    finally:
        worker.stop()


def test_emit_fails_clearly_when_it_cannot_deliver(tmp_path: Path) -> None:
    from tests.integration.workerproc import free_port

    result = _cli(
        f"127.0.0.1:{free_port()}",
        {},
        "emit",
        "sample",
        "--service",
        "s",
        "--kpi",
        "orders",
        "--value",
        "1",
    )
    assert result.returncode != 0
    assert "not delivered" in result.stderr
