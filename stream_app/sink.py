"""HTTP CloudEvents sink: ``POST /events`` -> the input topics, answered once Kafka has them.

CloudEvents HTTP binding, all three modes:

- binary: ``ce-specversion``, ``ce-id``, ``ce-source``, ``ce-type`` (...) headers, the CDEvent as
  the body, ``Content-Type`` its media type;
- structured: ``Content-Type: application/cloudevents+json``, the whole event as the body;
- batch: ``Content-Type: application/cloudevents-batch+json``, a JSON array of structured events.

Each event is validated by the Kafka input's codec (`stream_app.codec.decode_any`), so the sink
accepts exactly what the worker accepts, then produced to its kind's topic keyed by service, in the
Kafka form of its HTTP mode (binary: ``ce_*`` headers; structured and batch: a structured event).
A request is all or nothing: one bad event in a batch rejects the batch (400, naming its index and
reason) and nothing is produced. 202 comes only after every event is delivered; a delivery failure
answers 503 (retry). `plan` is the pure part; `build_sink_app` the aiohttp edge.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from stream_app import codec
from stream_app.codec import Rejected
from stream_app.settings import Settings

log = logging.getLogger("valueloop.sink")

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event to produce: its topic role, key (the service), value and Kafka headers."""

    role: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a request is refused: HTTP status, a bounded reason and a human detail."""

    status: int
    reason: str
    detail: str

    def body(self) -> dict[str, Any]:
        return {"error": self.reason, "detail": self.detail}


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def plan(
    headers: Mapping[str, str], body: bytes, *, max_event_bytes: int
) -> list[Outgoing] | Refused:
    """The messages one HTTP request becomes, or why it is refused (pure).

    Args:
        headers: the request headers (any case).
        body: the request body.
        max_event_bytes: one event larger than this is refused (as the worker would dead-letter
            it: ``oversized``).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    kind = media_type(lower.get("content-type"))
    if "ce-specversion" in lower:
        return _binary(lower, body, max_event_bytes)
    if kind == STRUCTURED:
        return _each([body], max_event_bytes, batch=False)
    if kind == BATCH:
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return Refused(400, "not-json", f"batch: {str(exc)[:200]}")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return Refused(400, "schema-invalid", "batch: expected a JSON array of CloudEvents")
        if not items:
            return Refused(400, "empty", "batch: no events")
        if len(items) > MAX_BATCH:
            return Refused(413, "too-many-events", f"batch: at most {MAX_BATCH} events")
        return _each([orjson.dumps(i) for i in items], max_event_bytes, batch=True)
    return Refused(
        415,
        "not-a-cloudevent",
        f"Content-Type {kind or '(none)'!r} without ce-specversion: send a binary-mode event "
        f"(ce-* headers), {STRUCTURED} or {BATCH}",
    )


def _binary(lower: Mapping[str, str], body: bytes, max_bytes: int) -> list[Outgoing] | Refused:
    # The HTTP binding percent-encodes header values; the Kafka binding carries them as UTF-8.
    kafka_headers = [
        (f"ce_{k[3:]}", unquote(v).encode()) for k, v in lower.items() if k.startswith("ce-")
    ]
    if "content-type" in lower:
        kafka_headers.append(("content-type", lower["content-type"].encode()))
    decoded = codec.decode_any(body, kafka_headers, max_bytes=max_bytes)
    if isinstance(decoded, Rejected):
        return _refused(decoded, "")
    return [_outgoing(decoded, body, kafka_headers)]


def _each(values: list[bytes], max_bytes: int, *, batch: bool) -> list[Outgoing] | Refused:
    out: list[Outgoing] = []
    for i, value in enumerate(values):
        decoded = codec.decode_any(value, None, max_bytes=max_bytes)
        if isinstance(decoded, Rejected):
            return _refused(decoded, f"event {i}: " if batch else "")
        if codec.role_of(decoded) == "telemetry" or "specversion" not in orjson.loads(value):
            # A bare sample or CDEvent is not a CloudEvent: this endpoint speaks CloudEvents.
            where = f"event {i}: " if batch else ""
            return Refused(400, "not-a-cloudevent", f"{where}no specversion: not a CloudEvent")
        out.append(_outgoing(decoded, value, []))
    return out


def _refused(rejected: Rejected, where: str) -> Refused:
    status = 413 if rejected.reason == "oversized" else 400
    return Refused(status, rejected.reason, where + rejected.detail)


def _outgoing(decoded: codec.Decoded, value: bytes, headers: list[tuple[str, bytes]]) -> Outgoing:
    return Outgoing(codec.role_of(decoded), codec.key_of(decoded), value, headers, decoded.id or "")


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_sink_app(settings: Settings, sender: Any) -> web.Application:
    """The aiohttp application: ``POST /events`` and ``GET /health``.

    Args:
        settings: topics, token, size limits.
        sender: an `stream_app.producer.AsyncSender` (or anything with its ``send``).
    """
    topics = settings.topic_names()
    token = settings.sink_token.get_secret_value().encode() if settings.sink_token else None

    def refuse(r: Refused, **extra: str) -> web.Response:
        return web.json_response(r.body(), status=r.status, headers=extra or None)

    async def events(request: web.Request) -> web.Response:
        if token is not None:
            given = request.headers.get("Authorization", "")
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(credential.encode(), token):
                why = "missing bearer token" if not given else "wrong bearer token"
                return refuse(Refused(401, "unauthorized", why), **{"WWW-Authenticate": "Bearer"})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = settings.sink_max_request_bytes
            return refuse(Refused(413, "oversized", f"the request is over {limit} bytes"))
        planned = plan(request.headers, body, max_event_bytes=settings.max_message_bytes)
        if isinstance(planned, Refused):
            return refuse(planned)
        futures = [sender.send(topics[o.role], o.value, o.key, o.headers or None) for o in planned]
        delivered = []
        failed: Exception | None = None
        for fut in futures:  # wait for all, also after a failure: none is left dangling
            try:
                delivered.append(await fut)
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            log.warning("delivery failed: %s", failed)
            return refuse(Refused(503, "delivery-failed", str(failed)[:300]))
        return web.json_response(
            {
                "accepted": len(planned),
                "events": [
                    {"id": o.id, "topic": t, "partition": p, "offset": off}
                    for o, (t, p, off) in zip(planned, delivered, strict=True)
                ],
            },
            status=202,
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    app = web.Application(client_max_size=settings.sink_max_request_bytes)
    app.router.add_post("/events", events)
    app.router.add_get("/health", health)
    return app


def run_sink(settings: Settings) -> None:
    """Serve the sink until interrupted (SIGINT/SIGTERM), then deliver what is queued."""
    from stream_app.preflight import check_kafka
    from stream_app.producer import AsyncSender

    if settings.sink_token is None and not is_loopback(settings.sink_host):
        raise ValueError(
            f"the sink binds {settings.sink_host}, beyond this machine, without a token: set "
            "VALUELOOP_SINK_TOKEN (bearer token) or bind 127.0.0.1"
        )
    check_kafka(settings)
    sender = AsyncSender(settings, timeout=settings.sink_delivery_timeout_seconds)
    app = build_sink_app(settings, sender)

    async def close(_app: web.Application) -> None:
        sender.close()

    app.on_cleanup.append(close)
    web.run_app(
        app,
        host=settings.sink_host,
        port=settings.sink_port,
        print=lambda msg: log.info("%s", msg),
        access_log=None,
    )
