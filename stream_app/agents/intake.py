"""Input agents: decode each message, dead-letter what cannot be used, hand the rest to the core."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import faust

from stream_app.codec import Decoded, Rejected, Role, decode, encode_verdict
from stream_app.events.ledger import encode_ledger
from stream_app.metrics import Metrics
from stream_app.pipeline import Step
from stream_app.settings import Settings

Handler = Callable[[Decoded, int], Step]

DETAIL_LIMIT = 1000
# Agents and the input roles each consumes. Deployments and telemetry share one agent (and so one
# partition owner) because both are keyed by service and the release-impact join must be local.
AGENT_ROLES: tuple[tuple[str, tuple[Role, ...]], ...] = (
    ("impact-intake", ("deployments", "telemetry")),
    ("flow-intake", ("workflow",)),
    ("incident-intake", ("incidents",)),
)


def header_list(headers: Any) -> list[tuple[str, bytes | None]]:
    """Kafka headers as a list of (name, value), whatever shape the client gave."""
    if not headers:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return [(str(k), v) for k, v in headers]


def deadletter_headers(msg: Any, role: str, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """Headers that say where a dead-lettered message came from and why it was rejected."""
    original = [(k, v) for k, v in header_list(msg.headers) if v is not None]
    return [
        *original,
        ("valueloop.source.topic", str(msg.topic).encode()),
        ("valueloop.source.role", role.encode()),
        ("valueloop.source.partition", str(msg.partition).encode()),
        ("valueloop.source.offset", str(msg.offset).encode()),
        ("valueloop.reason", reason.encode()),
        ("valueloop.detail", detail[:DETAIL_LIMIT].encode("utf-8", "replace")),
    ]


def register_intake(app: faust.App, settings: Settings, metrics: Metrics, handle: Handler) -> None:
    """Register the input agents: decode -> core (`handle`) -> emit verdicts / dead letters."""
    deadletter = app.topic(settings.topic_deadletter, partitions=settings.topic_partitions)
    impact = app.topic(settings.topic_impact, partitions=settings.topic_partitions)
    ledger = app.topic(settings.topic_ledger, partitions=settings.topic_partitions)
    names = settings.topic_names()
    role_of_topic: dict[str, Role] = {names[r]: r for _, roles in AGENT_ROLES for r in roles}

    async def process(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            msg = event.message
            role = role_of_topic[msg.topic]
            # A data error never escapes: decode and the core return outcomes as values.
            decoded = decode(
                role, msg.value, header_list(msg.headers), max_bytes=settings.max_message_bytes
            )
            if isinstance(decoded, Rejected):
                reason, detail = decoded.reason, decoded.detail
            else:
                step = handle(decoded, msg.partition)
                if role == "telemetry":
                    metrics.samples.labels(step.outcome).inc()
                if not step.rejected:
                    metrics.accepted(role)
                    for rec in step.records:
                        await impact.send(key=rec.service.encode(), value=encode_verdict(rec))
                        metrics.observe_verdict(rec)
                    for entry in step.ledger:
                        await ledger.send(key=entry.service.encode(), value=encode_ledger(entry))
                        kind = "release" if entry.item_id is None else "item"
                        metrics.ledger_published.labels(kind).inc()
                    continue
                reason, detail = step.outcome, f"the core refused the {role} event: {step.outcome}"
            await deadletter.send(
                key=msg.key,
                value=msg.value or b"",
                headers=deadletter_headers(msg, role, reason, detail),
            )
            metrics.rejected(role, reason)

    for agent_name, roles in AGENT_ROLES:
        source = app.topic(*(names[r] for r in roles), partitions=settings.topic_partitions)
        app.agent(source, name=agent_name)(process)
