"""The HTTP CloudEvents sink without Kafka: which messages a request becomes, status codes, auth.

Requests are built with the CloudEvents SDK's HTTP binding (binary and structured mode; a batch is
a JSON array of structured events). The HTTP edge is driven with aiohttp's test client and a
sender that records what it was given (the real producer is in tests/integration/test_sink_e2e).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from stream_app import codec
from stream_app.errors import DeliveryError
from stream_app.events.model import Incident, Release
from stream_app.settings import Settings
from stream_app.sink import BATCH, STRUCTURED, Refused, build_sink_app, plan

MAX = 262144


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


RELEASE = Release("d-1", "checkout", "1.4.2", 1764064800.0, "deployed")
INCIDENT = Incident(
    id="i-1", service="search", incident_id="INC-1", time=1764064900.0, action="detected"
)


def batch_body(*events: CloudEvent) -> bytes:
    return orjson.dumps([orjson.loads(JSONFormat().write(e)) for e in events])


def test_binary_mode_becomes_a_kafka_binary_event_keyed_by_service() -> None:
    msg = ce_http.to_binary_event(cloudevent(RELEASE))
    out = plan(msg.headers, msg.body, max_event_bytes=MAX)
    assert isinstance(out, list) and len(out) == 1
    o = out[0]
    assert (o.role, o.key, o.id) == ("deployments", b"checkout", "d-1")
    headers = dict(o.headers)
    assert headers["ce_type"] == b"dev.cdevents.service.deployed.0.2.0"
    assert headers["ce_specversion"] == b"1.0" and headers["content-type"] == b"application/json"
    # What the worker will read decodes to the same event.
    assert codec.decode("deployments", o.value, o.headers) == codec.decode_any(o.value, o.headers)
    assert not isinstance(codec.decode("deployments", o.value, o.headers), codec.Rejected)


def test_structured_and_batch_modes_route_each_event_to_its_topic() -> None:
    msg = ce_http.to_structured_event(cloudevent(INCIDENT))
    assert msg.headers["content-type"].startswith(STRUCTURED)
    out = plan(msg.headers, msg.body, max_event_bytes=MAX)
    assert isinstance(out, list) and [(o.role, o.key) for o in out] == [("incidents", b"search")]
    body = batch_body(cloudevent(RELEASE), cloudevent(INCIDENT))
    out = plan({"Content-Type": BATCH}, body, max_event_bytes=MAX)
    assert isinstance(out, list)
    assert [(o.role, o.key, o.headers) for o in out] == [
        ("deployments", b"checkout", []),
        ("incidents", b"search", []),
    ]
    for o in out:
        assert not isinstance(codec.decode(o.role, o.value), codec.Rejected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({"Content-Type": "text/plain"}, b"hello", 415, "not-a-cloudevent"),
        ({"Content-Type": STRUCTURED}, b"{nope", 400, "not-json"),
        ({"Content-Type": BATCH}, b"[]", 400, "empty"),
        ({"Content-Type": BATCH}, b'{"a": 1}', 400, "schema-invalid"),
        (
            {"Content-Type": STRUCTURED},
            orjson.dumps({"specversion": "1.0", "id": "x", "source": "/", "type": "com.x"}),
            400,
            "unknown-type",
        ),
        (
            {"Content-Type": STRUCTURED},
            orjson.dumps(codec.cdevent_of(RELEASE)),  # a plain CDEvent is not a CloudEvent
            400,
            "not-a-cloudevent",
        ),
        (
            {"ce-specversion": "0.3", "ce-id": "x", "ce-source": "/", "ce-type": "t"},
            b"{}",
            400,
            "unknown-specversion",
        ),
    ],
)
def test_bad_requests_are_refused_with_a_reason(
    headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    got = plan(headers, body, max_event_bytes=MAX)
    assert isinstance(got, Refused) and (got.status, got.reason) == (status, reason), got
    assert got.detail


def test_one_bad_event_refuses_the_whole_batch_and_names_it() -> None:
    bad = cloudevent(RELEASE)
    body = orjson.loads(batch_body(cloudevent(INCIDENT), bad))
    body[1]["id"] = "other"  # CloudEvents id differs from the CDEvent's context.id
    got = plan({"Content-Type": BATCH}, orjson.dumps(body), max_event_bytes=MAX)
    assert isinstance(got, Refused) and got.reason == "envelope-mismatch"
    assert got.detail.startswith("event 1: ")


def test_an_event_over_the_message_limit_is_413() -> None:
    msg = ce_http.to_structured_event(cloudevent(RELEASE))
    got = plan(msg.headers, msg.body, max_event_bytes=len(msg.body) - 1)
    assert isinstance(got, Refused) and (got.status, got.reason) == (413, "oversized")


class FakeSender:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, Any]] = []
        self.fail = fail

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> Any:
        fut: asyncio.Future[tuple[str, int, int]] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(DeliveryError("broker away"))
        else:
            self.sent.append((topic, value, key, headers))
            fut.set_result((topic, 0, len(self.sent) - 1))
        return fut


async def _client(sender: FakeSender, **settings: Any) -> TestClient[Any, Any]:
    app = build_sink_app(Settings(**settings), sender)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def test_http_edge_answers_202_after_delivery_with_where_it_went() -> None:
    sender = FakeSender()
    client = await _client(sender, sink_token="s3cret")
    try:
        msg = ce_http.to_binary_event(cloudevent(RELEASE))
        auth = {"Authorization": "Bearer s3cret"}
        r = await client.post("/events", data=msg.body, headers={**msg.headers, **auth})
        assert r.status == 202, await r.text()
        body = await r.json()
        assert body["accepted"] == 1 and body["events"][0]["topic"] == "vsm.deployments"
        assert sender.sent[0][0] == "vsm.deployments" and sender.sent[0][2] == b"checkout"

        r = await client.post("/events", data=msg.body, headers=msg.headers)
        assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
        r = await client.post(
            "/events", data=msg.body, headers={**msg.headers, "Authorization": "Bearer nope"}
        )
        assert r.status == 401
        r = await client.post("/events", data=b"x", headers={"Content-Type": "text/plain", **auth})
        assert r.status == 415 and (await r.json())["error"] == "not-a-cloudevent"
        assert len(sender.sent) == 1
        r = await client.get("/events")
        assert r.status == 405
    finally:
        await client.close()


async def test_http_edge_refuses_large_bodies_and_reports_delivery_failure() -> None:
    client = await _client(FakeSender(fail=True), sink_max_request_bytes=2048)
    try:
        big = b"[" + b" " * 4096 + b"]"
        r = await client.post("/events", data=big, headers={"Content-Type": BATCH})
        assert r.status == 413 and (await r.json())["error"] == "oversized"
        msg = ce_http.to_structured_event(cloudevent(RELEASE))
        r = await client.post("/events", data=msg.body, headers=msg.headers)
        assert r.status == 503 and (await r.json())["error"] == "delivery-failed"
    finally:
        await client.close()


def test_the_sink_refuses_to_bind_beyond_loopback_without_a_token() -> None:
    from stream_app.sink import is_loopback, run_sink

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="VALUELOOP_SINK_TOKEN"):
        run_sink(Settings(sink_host="0.0.0.0", kafka_bootstrap_servers="127.0.0.1:1"))
