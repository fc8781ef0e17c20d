"""OTLP agents: re-key the Collector's export requests by service, then convert them to samples.

The Collector's Kafka exporter keys records by nothing or by a hash of all resource attributes,
so one service's metrics arrive on any partition. `otlp-rekey` cuts each request into one request
per ``service.name`` and sends those to an internal topic keyed by service (partitioned like the
inputs); `otlp-convert` reads it, converts with the pure `stream_app.core.otlp.convert` against
the service's cumulative-series state (a changelog-backed table keyed by service, so it lives on
the service's partition, survives restarts and moves with a rebalance) and sends the samples to
the telemetry topic keyed by service, where the impact intake reads them like any other sample.
Delivery is at least once: a point converted again after a crash yields samples with the same
ids, which the pipeline drops as duplicates.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import faust
import orjson

from stream_app.agents.intake import DeadLetters, deadletter_headers
from stream_app.codec import Rejected
from stream_app.core.catalog import Catalog
from stream_app.core.otlp import convert
from stream_app.events.otlp import decode_request, points_of, rekey
from stream_app.events.telemetry import sample_to_obj
from stream_app.metrics import Metrics
from stream_app.settings import Settings

log = logging.getLogger(__name__)

# Permanent names: they name the internal topic and the changelog topic.
REKEY_TOPIC_SUFFIX = "otlp-by-service"
SERIES_TABLE = "otlp-series"
STATE_MAX_BYTES = 16 * 1024 * 1024


def convert_part(
    catalog: Catalog, service: str, value: bytes, state: bytes | None, metrics: Metrics
) -> tuple[list[bytes], bytes]:
    """One service's export request -> (sample messages, new state) against its stored state."""
    request = decode_request(value, max_bytes=len(value) + 1)
    if isinstance(request, Rejected):  # we wrote it ourselves: only a bug gets here
        log.error("internal OTLP record for %s unreadable: %s", service, request.detail)
        return [], state or zlib.compress(b"{}")
    points, skipped = points_of(request)
    series = orjson.loads(zlib.decompress(state)) if state else {}
    out = convert(service, points, catalog, series)
    for outcome, n in (out.outcomes + skipped).items():
        metrics.otlp_points.labels(outcome).inc(n)
    # One value per service, rewritten per request: compressed (ids and times repeat a lot).
    return [orjson.dumps(sample_to_obj(s)) for s in out.samples], zlib.compress(
        orjson.dumps(series), 1
    )


def register_otlp(
    app: faust.App,
    settings: Settings,
    metrics: Metrics,
    catalog: Catalog,
    deadletters: DeadLetters,
) -> None:
    """Register the OTLP agents (`otlp-rekey`, `otlp-convert`) and the series table."""
    parts = settings.topic_partitions
    source = app.topic(settings.topic_otlp, partitions=parts)
    by_service = app.topic(
        f"{settings.app_id}-{REKEY_TOPIC_SUFFIX}", partitions=parts, internal=True
    )
    telemetry = app.topic(settings.topic_telemetry, partitions=parts)
    table: Any = app.Table(
        SERIES_TABLE,
        default=None,
        partitions=parts,
        extra_topic_configs={"max.message.bytes": str(STATE_MAX_BYTES)},
    )
    # Keys are service names and values orjson bytes: rebuild the changelog topic raw (faust's
    # default json serializer would fail on recovery), as the impact-state table does.
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    table._changelog_topic = table._new_changelog_topic()

    @app.agent(source, name="otlp-rekey")
    async def otlp_rekey(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            msg = event.message
            split, rejected = rekey(msg.value, max_bytes=settings.max_otlp_message_bytes)
            for service, value in split.items():
                await by_service.send(key=service.encode(), value=value)
            if rejected is not None:
                headers = deadletter_headers(msg, "otlp", rejected.reason, rejected.detail)
                deadletters.send(msg.key, msg.value or b"", headers)
                metrics.rejected("otlp", rejected.reason)
                if not await deadletters.deliver(30.0):  # before faust acks the input
                    raise RuntimeError("OTLP dead letter not delivered (is the broker away?)")
            if split:
                metrics.accepted("otlp")

    @app.agent(by_service, name="otlp-convert")
    async def otlp_convert(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            # Keys are bytes both ways: the raw changelog restores them as bytes after a restart.
            key: bytes = event.key
            samples, state = convert_part(
                catalog, key.decode(), event.value, table.get(key), metrics
            )
            table[key] = state
            for value in samples:
                await telemetry.send(key=key, value=value)
