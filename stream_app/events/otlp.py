"""OTLP metrics contract: `ExportMetricsServiceRequest` bytes (otlp_proto or otlp_json) -> points.

The OpenTelemetry Collector's Kafka exporter writes one export request per record, no headers,
with the key null or a hash of the resource attributes. `decode_request` tells the two encodings
apart by the first byte (``{``: OTLP/JSON, anything else: protobuf) and never raises for bad
input: it returns `Rejected` with a bounded reason. `split_by_service` cuts a request into one
request per ``service.name`` (to re-key it by service); `points_of` flattens a request into plain
`OtlpPoint` values for the pure conversion in `stream_app.core.otlp`.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtoDecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from stream_app.codec import Rejected
from stream_app.core.otlp import OtlpPoint

__all__ = [
    "OTLP_REASONS",
    "OtlpPoint",
    "decode_request",
    "points_of",
    "service_of",
    "split_by_service",
]

OTLP_REASONS: tuple[str, ...] = (
    "empty",
    "oversized",
    "not-otlp",
    "not-json",
    "schema-invalid",
    "no-service",
)
SERVICE_NAME = "service.name"
_NO_RECORDED_VALUE = 1  # DataPointFlags.FLAG_NO_RECORDED_VALUE_MASK
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def decode_request(
    value: bytes | None, *, max_bytes: int
) -> ExportMetricsServiceRequest | Rejected:
    """Parse an export request in either encoding the Collector's Kafka exporter writes.

    Returns:
        The request (at least one resourceMetrics), or `Rejected`.
    """
    if not value:
        return Rejected("empty", "the message has no value (tombstone or empty)")
    if len(value) > max_bytes:
        return Rejected("oversized", f"{len(value)} bytes is over the {max_bytes}-byte limit")
    request = ExportMetricsServiceRequest()
    if value.lstrip()[:1] == b"{":
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Rejected("not-json", f"otlp_json: {str(exc)[:300]}")
        try:
            # Exemplars carry trace ids as hex in OTLP/JSON, base64 in protobuf's JSON mapping:
            # they are of no use here, so they are dropped before parsing.
            json_format.ParseDict(_without_exemplars(doc), request, ignore_unknown_fields=True)
        except (json_format.ParseError, TypeError, ValueError) as exc:
            return Rejected("schema-invalid", f"otlp_json: {str(exc)[:300]}")
        encoding = "otlp_json"
    else:
        try:
            request.ParseFromString(value)
        except (ProtoDecodeError, ValueError) as exc:
            return Rejected("not-otlp", f"not an OTLP ExportMetricsServiceRequest: {exc}")
        encoding = "otlp_proto"
    if not request.resource_metrics:
        reason = "schema-invalid" if encoding == "otlp_json" else "not-otlp"
        return Rejected(reason, f"{encoding}: an export request without resourceMetrics")
    return request


def _without_exemplars(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _without_exemplars(v) for k, v in doc.items() if k != "exemplars"}
    if isinstance(doc, list):
        return [_without_exemplars(v) for v in doc]
    return doc


def _text(value: AnyValue) -> str:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which == "int_value":
        return str(value.int_value)
    if which == "double_value":
        return repr(value.double_value)
    if which is None:
        return ""
    return json_format.MessageToJson(value, indent=None, sort_keys=True)


def _attributes(attrs: Any) -> dict[str, str]:
    return {kv.key: _text(kv.value) for kv in attrs}


def service_of(attributes: list[KeyValue] | Any) -> str | None:
    """The ``service.name`` resource attribute (None when missing or empty)."""
    for kv in attributes:
        if kv.key == SERVICE_NAME and kv.value.WhichOneof("value") == "string_value":
            return kv.value.string_value or None
    return None


def split_by_service(
    request: ExportMetricsServiceRequest,
) -> tuple[dict[str, bytes], list[str]]:
    """One serialized request per ``service.name``, and what was left out.

    Returns:
        (service -> protobuf bytes of its resources' metrics, problems), a problem per resource
        without a ``service.name`` (those resources are not in any part).
    """
    parts: dict[str, ExportMetricsServiceRequest] = {}
    problems: list[str] = []
    for i, rm in enumerate(request.resource_metrics):
        service = service_of(rm.resource.attributes)
        if service is None:
            problems.append(f"resourceMetrics[{i}]: no {SERVICE_NAME} resource attribute")
            continue
        parts.setdefault(service, ExportMetricsServiceRequest()).resource_metrics.append(rm)
    return {s: r.SerializeToString(deterministic=True) for s, r in parts.items()}, problems


def _series_id(resource: dict[str, str], scope: str, metric: str, attrs: dict[str, str]) -> str:
    key = orjson.dumps([sorted(resource.items()), scope, metric, sorted(attrs.items())])
    return hashlib.blake2b(key, digest_size=12).hexdigest()


def points_of(request: ExportMetricsServiceRequest) -> tuple[list[OtlpPoint], Counter[str]]:
    """Every usable data point of a request, and counts of what was skipped and why.

    Skipped: ``unsupported`` (exponential histograms, summaries, metrics without data),
    ``no-value`` (points flagged as having no recorded value), ``non-finite``.
    """
    points: list[OtlpPoint] = []
    skipped: Counter[str] = Counter()
    for rm in request.resource_metrics:
        resource = _attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in _metric_points(resource, sm.scope.name, metric, skipped):
                    points.append(point)
    return points, skipped


def _metric_points(
    resource: dict[str, str], scope: str, metric: Metric, skipped: Counter[str]
) -> Iterator[OtlpPoint]:
    which = metric.WhichOneof("data")
    if which == "sum":
        cumulative = metric.sum.aggregation_temporality == _CUMULATIVE
        monotonic, kind, data = metric.sum.is_monotonic, "sum", metric.sum.data_points
    elif which == "gauge":
        cumulative, monotonic, kind, data = False, False, "gauge", metric.gauge.data_points
    elif which == "histogram":
        cumulative = metric.histogram.aggregation_temporality == _CUMULATIVE
        for h in metric.histogram.data_points:
            if h.flags & _NO_RECORDED_VALUE:
                skipped["no-value"] += 1
                continue
            if not math.isfinite(h.sum):
                skipped["non-finite"] += 1
                continue
            attrs = _attributes(h.attributes)
            buckets = tuple(float(c) for c in h.bucket_counts)
            bounds = tuple(h.explicit_bounds)
            if len(buckets) != len(bounds) + 1:
                bounds, buckets = (), ()
            yield OtlpPoint(
                metric.name,
                "histogram",
                cumulative,
                True,
                _series_id(resource, scope, metric.name, attrs),
                attrs,
                h.start_time_unix_nano,
                h.time_unix_nano,
                float(h.sum),
                float(h.count),
                bounds,
                buckets,
            )
        return
    else:
        skipped["unsupported"] += max(1, _count_points(metric))
        return
    for p in data:
        if p.flags & _NO_RECORDED_VALUE:
            skipped["no-value"] += 1
            continue
        value = float(p.as_int) if p.WhichOneof("value") == "as_int" else p.as_double
        if not math.isfinite(value):
            skipped["non-finite"] += 1
            continue
        attrs = _attributes(p.attributes)
        yield OtlpPoint(
            metric.name,
            kind,  # type: ignore[arg-type]  # "sum" or "gauge", set above
            cumulative,
            monotonic,
            _series_id(resource, scope, metric.name, attrs),
            attrs,
            p.start_time_unix_nano,
            p.time_unix_nano,
            value,
        )


def _count_points(metric: Metric) -> int:
    which = metric.WhichOneof("data")
    if which is None:
        return 0
    return len(getattr(metric, which).data_points)


def rekey(value: bytes | None, *, max_bytes: int) -> tuple[dict[str, bytes], Rejected | None]:
    """A message of the OTLP topic as one protobuf request per service, and what to dead-letter.

    Returns:
        (service -> request bytes, None) when every resource names its service; with a
        `Rejected` (``no-service``) when some do not (the others are still returned); ({},
        `Rejected`) when the message is not a usable export request.
    """
    request = decode_request(value, max_bytes=max_bytes)
    if isinstance(request, Rejected):
        return {}, request
    parts, problems = split_by_service(request)
    if not problems:
        return parts, None
    kept = f"; the {len(parts)} other service(s) were converted" if parts else ""
    return parts, Rejected("no-service", "; ".join(problems[:4]) + kept)
