"""`valueloop sink` on the real broker: CloudEvents over HTTP in all three modes reach the topics.

Sent with the CloudEvents SDK's HTTP binding (urllib) and with curl; the messages are read back
from Kafka (keyed by service, on their kind's topic, decodable by the worker's codec); rejected
requests answer 4xx with a reason and put nothing on the topics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from stream_app import codec
from stream_app.events.model import Incident, Release, WorkflowEvent
from stream_app.producer import ensure_topics
from stream_app.settings import Settings
from stream_app.sink import BATCH
from tests.integration.workerproc import consume_all, free_port, topic_env

pytestmark = pytest.mark.integration
TOKEN = "t0ken-for-tests"
T = 1764064800.0


def cloudevent(event: codec.Decoded) -> CloudEvent:
    doc = codec.cdevent_of(event)
    ctx = doc["context"]
    return CloudEvent(
        attributes={
            "id": ctx["id"],
            "source": ctx["source"],
            "type": ctx["type"],
            "specversion": "1.0",
            "time": datetime.fromisoformat(ctx["timestamp"]),
            "datacontenttype": "application/json",
        },
        data=doc,
    )


def release(n: int, service: str) -> Release:
    return Release(f"dep-{n}", service, f"1.{n}.0", T + n, "deployed")


def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/events", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status), orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), orjson.loads(e.read())


def curl(port: int, body: bytes, *headers: str) -> tuple[int, dict[str, Any]]:
    args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "--data-binary", "@-"]
    for h in headers:
        args += ["-H", h]
    done = subprocess.run(
        [*args, f"http://127.0.0.1:{port}/events"],
        input=body,
        capture_output=True,
        timeout=60,
        check=True,
    )
    text, _, code = done.stdout.rpartition(b"\n")
    return int(code), orjson.loads(text)


@pytest.fixture
def sink(kafka_bootstrap: str, tmp_path: Path) -> Any:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix), "VALUELOOP_APP_ID": f"{prefix}-app"}
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        **{k[len("VALUELOOP_") :].lower(): v for k, v in env.items()},
    )
    ensure_topics(settings)
    port = free_port()
    log = tmp_path / "sink.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", "sink"],
            env={
                **os.environ,
                **env,
                "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "VALUELOOP_SINK_PORT": str(port),
                "VALUELOOP_SINK_TOKEN": TOKEN,
                "VALUELOOP_SINK_MAX_REQUEST_BYTES": "65536",
            },
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield port, settings, kafka_bootstrap
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_cloudevents_over_http_in_all_modes_reach_the_topics(sink: Any) -> None:
    port, settings, bootstrap = sink
    auth = f"Bearer {TOKEN}"
    item = WorkflowEvent(
        id="wf-1",
        time=T + 50,
        service="search",
        item_id="PR-7",
        item_type=None,
        stage="review",
        action="merged",
        source_type="change",
    )
    incident = Incident(
        id="inc-1", service="search", incident_id="INC-1", time=T + 60, action="detected"
    )
    accepted: list[tuple[str, int]] = []

    def ok(status: int, body: dict[str, Any], n: int) -> None:
        assert status == 202, body
        assert body["accepted"] == n
        accepted.extend((e["topic"], e["offset"]) for e in body["events"])

    # The SDK's HTTP binding, three modes.
    msg = ce_http.to_binary_event(cloudevent(release(1, "checkout")))
    ok(*post(port, msg.body, {**msg.headers, "Authorization": auth}), 1)
    msg = ce_http.to_structured_event(cloudevent(incident))
    ok(*post(port, msg.body, {**msg.headers, "Authorization": auth}), 1)
    batch = orjson.dumps(
        [
            orjson.loads(JSONFormat().write(cloudevent(e)))
            for e in (release(2, "search"), item, release(3, "checkout"))
        ]
    )
    ok(*post(port, batch, {"Content-Type": BATCH, "Authorization": auth}), 3)

    # curl, three modes.
    doc = codec.cdevent_of(release(4, "cart"))
    ctx = doc["context"]
    ok(
        *curl(
            port,
            orjson.dumps(doc),
            f"Authorization: {auth}",
            "Content-Type: application/json",
            "ce-specversion: 1.0",
            f"ce-id: {ctx['id']}",
            f"ce-source: {ctx['source']}",
            f"ce-type: {ctx['type']}",
        ),
        1,
    )
    structured = codec.encode_structured(release(5, "cart"))
    ok(
        *curl(
            port,
            structured,
            f"Authorization: {auth}",
            "Content-Type: application/cloudevents+json; charset=utf-8",
        ),
        1,
    )
    two = b"[" + codec.encode_structured(release(6, "cart")) + b","
    two += codec.encode_structured(release(7, "checkout")) + b"]"
    ok(*curl(port, two, f"Authorization: {auth}", f"Content-Type: {BATCH}"), 2)

    # Rejected: 4xx with a reason, nothing produced.
    status, body = curl(port, structured, "Content-Type: application/cloudevents+json")
    assert (status, body["error"]) == (401, "unauthorized")
    status, body = curl(port, structured, "Authorization: Bearer wrong", f"Content-Type: {BATCH}")
    assert (status, body["error"]) == (401, "unauthorized")
    bad_type = orjson.loads(structured)
    bad_type["type"] = "com.example.nothing"
    status, body = curl(
        port,
        orjson.dumps(bad_type),
        f"Authorization: {auth}",
        "Content-Type: application/cloudevents+json",
    )
    assert (status, body["error"]) == (400, "unknown-type") and body["detail"]
    status, body = curl(
        port, b"[" + b" " * 70000 + b"]", f"Authorization: {auth}", f"Content-Type: {BATCH}"
    )
    assert (status, body["error"]) == (413, "oversized")
    status, body = curl(port, b"hello", f"Authorization: {auth}", "Content-Type: text/plain")
    assert (status, body["error"]) == (415, "not-a-cloudevent")

    deployments = consume_all(bootstrap, settings.topic_deployments, 7, timeout=30)
    incidents = consume_all(bootstrap, settings.topic_incidents, 1, timeout=30)
    workflow = consume_all(bootstrap, settings.topic_workflow, 1, timeout=30)
    assert len(deployments) == 7 and len(incidents) == 1 and len(workflow) == 1
    got: dict[str, bytes] = {}
    for m in deployments:
        event = codec.decode("deployments", m.value(), m.headers())  # type: ignore[attr-defined]
        assert isinstance(event, Release), event
        assert m.key() == event.service.encode()  # type: ignore[attr-defined]
        got[event.id] = m.key()  # type: ignore[attr-defined]
    assert got == {
        "dep-1": b"checkout",
        "dep-2": b"search",
        "dep-3": b"checkout",
        "dep-4": b"cart",
        "dep-5": b"cart",
        "dep-6": b"cart",
        "dep-7": b"checkout",
    }
    # Binary mode stays binary on Kafka (ce_* headers), the others are structured values.
    first = next(m for m in deployments if b"dep-1" in m.value())  # type: ignore[attr-defined]
    assert dict(first.headers())["ce_id"] == b"dep-1"  # type: ignore[attr-defined]
    inc = codec.decode("incidents", incidents[0].value())  # type: ignore[attr-defined]
    assert isinstance(inc, Incident) and incidents[0].key() == b"search"  # type: ignore[attr-defined]
    wf = codec.decode("workflow", workflow[0].value())  # type: ignore[attr-defined]
    assert isinstance(wf, WorkflowEvent) and workflow[0].key() == b"search"  # type: ignore[attr-defined]
    assert len(accepted) == 9
