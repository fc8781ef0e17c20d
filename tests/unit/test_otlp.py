"""OTLP metrics -> KPI samples: decoding both encodings, the mapping, cumulative deltas, histograms.

Payloads are built with the `opentelemetry-proto` classes, as the Collector's Kafka exporter
writes them (otlp_proto: the serialized request; otlp_json: compact OTLP/JSON, int64 as strings,
enums as integers).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from stream_app.codec import Rejected
from stream_app.core.catalog import load_catalog, parse_catalog
from stream_app.core.otlp import convert
from stream_app.errors import ConfigError
from stream_app.events.otlp import decode_request, points_of, split_by_service

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
T0 = 1_764_064_800 * 10**9  # 2025-11-25T10:00:00Z in ns
MIN = 60 * 10**9
CATALOG = load_catalog()


def kv(attrs: dict[str, Any]) -> list[KeyValue]:
    out = []
    for k, v in attrs.items():
        if isinstance(v, bool):
            out.append(KeyValue(key=k, value=AnyValue(bool_value=v)))
        elif isinstance(v, int):
            out.append(KeyValue(key=k, value=AnyValue(int_value=v)))
        else:
            out.append(KeyValue(key=k, value=AnyValue(string_value=str(v))))
    return out


def request(*resources: tuple[dict[str, Any], list[Metric]]) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(attributes=kv(attrs)),
                scope_metrics=[ScopeMetrics(metrics=metrics)],
            )
            for attrs, metrics in resources
        ]
    )


def counter(
    name: str, value: float, t: int, start: int, attrs: dict[str, Any] | None = None
) -> Metric:
    point = NumberDataPoint(
        start_time_unix_nano=start, time_unix_nano=t, attributes=kv(attrs or {})
    )
    if float(value).is_integer():
        point.as_int = int(value)
    else:
        point.as_double = value
    return Metric(
        name=name,
        sum=Sum(aggregation_temporality=CUMULATIVE, is_monotonic=True, data_points=[point]),
    )


def histogram(
    name: str,
    counts: list[int],
    bounds: list[float],
    total: float,
    t: int,
    start: int,
    temporality: int = CUMULATIVE,
) -> Metric:
    return Metric(
        name=name,
        histogram=Histogram(
            aggregation_temporality=temporality,
            data_points=[
                HistogramDataPoint(
                    start_time_unix_nano=start,
                    time_unix_nano=t,
                    count=sum(counts),
                    sum=total,
                    bucket_counts=counts,
                    explicit_bounds=bounds,
                )
            ],
        ),
    )


def otlp_json(req: ExportMetricsServiceRequest) -> bytes:
    """Compact OTLP/JSON as the Collector writes it (enums as integers)."""
    doc = json_format.MessageToDict(req, use_integers_for_enums=True)
    return orjson.dumps(doc)


SHOP = {"service.name": "shop", "service.instance.id": "a1", "telemetry.sdk.language": "python"}


def samples_of(req: ExportMetricsServiceRequest, state: dict[str, Any]) -> Any:
    decoded = decode_request(req.SerializeToString(), max_bytes=1 << 20)
    assert not isinstance(decoded, Rejected)
    points, _ = points_of(decoded)
    return convert("shop", points, CATALOG, state)


@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
def test_both_encodings_decode_to_the_same_request(encoding: str) -> None:
    req = request(
        (SHOP, [counter("shop.orders", 5, T0, T0 - MIN, {"region": "eu"})]),
        (
            {"service.name": "search"},
            [histogram("http.server.request.duration", [1, 2, 0], [0.1, 0.5], 0.7, T0, T0 - MIN)],
        ),
    )
    value = req.SerializeToString() if encoding == "otlp_proto" else otlp_json(req)
    if encoding == "otlp_json":  # int64 as strings, enums as integers, camelCase keys
        doc = orjson.loads(value)
        point = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]
        assert point["aggregationTemporality"] == 2 and point["dataPoints"][0]["asInt"] == "5"
    decoded = decode_request(value, max_bytes=1 << 20)
    assert decoded == req


def test_otlp_json_with_exemplars_and_unknown_fields_decodes() -> None:
    req = request((SHOP, [counter("shop.orders", 5, T0, T0 - MIN)]))
    doc = json_format.MessageToDict(req, use_integers_for_enums=True)
    point = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"][0]
    point["exemplars"] = [{"traceId": "5b8efff798038103d269b633813fc60c", "asDouble": 1.0}]
    doc["someNewField"] = 1
    assert decode_request(orjson.dumps(doc), max_bytes=1 << 20) == req


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (b"\x0a" * 2000, "oversized"),
        (b"\xff\xfe garbage", "not-otlp"),
        (b'{"resourceMetrics": [', "not-json"),
        (b'{"resourceMetrics": []}', "schema-invalid"),
        (b'{"resourceMetrics": "x"}', "schema-invalid"),
        (orjson.dumps({"service": "s", "kpi": "orders", "time": 1, "value": 1}), "schema-invalid"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason(value: bytes, reason: str) -> None:
    got = decode_request(value, max_bytes=1000)
    assert isinstance(got, Rejected) and got.reason == reason, got
    assert got.detail


def test_split_by_service_keys_each_resource_by_its_service_name() -> None:
    req = request(
        (SHOP, [counter("shop.orders", 1, T0, T0 - MIN)]),
        ({"service.name": "search"}, [counter("shop.orders", 2, T0, T0 - MIN)]),
        ({"host.name": "h"}, [counter("shop.orders", 3, T0, T0 - MIN)]),
        ({**SHOP, "service.instance.id": "b2"}, [counter("shop.orders", 4, T0, T0 - MIN)]),
    )
    parts, problems = split_by_service(req)
    assert sorted(parts) == ["search", "shop"]
    assert problems == ["resourceMetrics[2]: no service.name resource attribute"]
    shop = decode_request(parts["shop"], max_bytes=1 << 20)
    assert not isinstance(shop, Rejected) and len(shop.resource_metrics) == 2


def test_cumulative_counter_becomes_deltas_with_resets() -> None:
    state: dict[str, Any] = {}
    start = T0 - 3600 * 10**9  # a process running for an hour: its first point is a baseline
    out = samples_of(request((SHOP, [counter("shop.orders", 100, T0, start)])), state)
    assert out.samples == [] and out.outcomes == {"baseline": 1}
    out = samples_of(request((SHOP, [counter("shop.orders", 130, T0 + MIN, start)])), state)
    assert [(s.kpi, s.value, s.time) for s in out.samples] == [("orders", 30.0, T0 / 1e9 + 60)]
    # Re-delivered: stale, no sample.
    out = samples_of(request((SHOP, [counter("shop.orders", 130, T0 + MIN, start)])), state)
    assert out.samples == [] and out.outcomes == {"stale": 1}
    # The process restarted: a new start time, its value counts since then.
    new_start = T0 + MIN + 10**9
    out = samples_of(request((SHOP, [counter("shop.orders", 7, T0 + 2 * MIN, new_start)])), state)
    assert [s.value for s in out.samples] == [7.0] and out.outcomes == {"reset": 1}
    # A drop without a new start time is a reset too.
    out = samples_of(request((SHOP, [counter("shop.orders", 3, T0 + 3 * MIN, new_start)])), state)
    assert [s.value for s in out.samples] == [3.0] and out.outcomes == {"reset": 1}
    out = samples_of(request((SHOP, [counter("shop.orders", 5, T0 + 4 * MIN, new_start)])), state)
    assert [s.value for s in out.samples] == [2.0]


def test_a_new_process_counts_its_first_point_in_full() -> None:
    out = samples_of(request((SHOP, [counter("shop.orders", 12, T0, T0 - MIN)])), {})
    assert [s.value for s in out.samples] == [12.0] and out.outcomes == {"first": 1}


def test_series_are_told_apart_by_instance_and_attributes_but_labels_are_bounded() -> None:
    state: dict[str, Any] = {}
    old = T0 - 3600 * 10**9
    attrs_a = {"region": "eu", "http.route": "/a", "user.id": "u1"}
    attrs_b = {"region": "eu", "http.route": "/b", "user.id": "u2"}
    other = {**SHOP, "service.instance.id": "b2"}
    first = request(
        (SHOP, [counter("shop.orders", 10, T0, old, attrs_a)]),
        (SHOP, [counter("shop.orders", 20, T0, old, attrs_b)]),
        (other, [counter("shop.orders", 40, T0, old, attrs_a)]),
    )
    second = request(
        (SHOP, [counter("shop.orders", 11, T0 + MIN, old, attrs_a)]),
        (SHOP, [counter("shop.orders", 22, T0 + MIN, old, attrs_b)]),
        (other, [counter("shop.orders", 44, T0 + MIN, old, attrs_a)]),
    )
    samples_of(first, state)
    assert len(state) == 3
    out = samples_of(second, state)
    assert sorted(s.value for s in out.samples) == [1.0, 2.0, 4.0]
    # Only the catalog's scope labels are kept: the route and user id create no label values.
    assert {tuple(s.labels.items()) for s in out.samples} == {(("region", "eu"),)}
    assert len({s.id for s in out.samples}) == 3  # ids differ per series


def test_sample_ids_are_stable_so_a_converted_point_is_dropped_as_a_duplicate() -> None:
    req = request((SHOP, [counter("shop.orders", 12, T0, T0 - MIN)]))
    a = samples_of(req, {}).samples
    b = samples_of(req, {}).samples
    assert [s.id for s in a] == [s.id for s in b] and a[0].id is not None


def test_gauge_delta_sum_and_up_down_counter_are_taken_as_they_are() -> None:
    gauge = Metric(
        name="shop.cart.value",
        gauge=Gauge(data_points=[NumberDataPoint(time_unix_nano=T0, as_double=42.5)]),
    )
    delta = Metric(
        name="shop.sessions",
        sum=Sum(
            aggregation_temporality=DELTA,
            is_monotonic=True,
            data_points=[
                NumberDataPoint(start_time_unix_nano=T0 - MIN, time_unix_nano=T0, as_int=9)
            ],
        ),
    )
    updown = Metric(
        name="errors",
        sum=Sum(
            aggregation_temporality=CUMULATIVE,
            is_monotonic=False,
            data_points=[NumberDataPoint(start_time_unix_nano=1, time_unix_nano=T0, as_int=3)],
        ),
    )
    state: dict[str, Any] = {}
    out = samples_of(request((SHOP, [gauge, delta, updown])), state)
    assert [(s.kpi, s.value, s.count) for s in out.samples] == [
        ("cart_value", 42.5, 1.0),
        ("sessions", 9.0, 1.0),
        ("errors", 3.0, 1.0),
    ]
    assert state == {}  # nothing cumulative and monotonic: no state


def test_histogram_feeds_sum_and_count_or_buckets_for_a_quantile_stream() -> None:
    state: dict[str, Any] = {}
    bounds = [0.05, 0.1, 0.5]
    name = "http.server.request.duration"
    first = request((SHOP, [histogram(name, [5, 3, 1, 1], bounds, 1.2, T0, T0 - MIN)]))
    out = samples_of(first, state)
    assert out.outcomes == {"first": 1}
    # latency_ms is read by a quantile KPI: a sample per bucket (ms), and the request count.
    latency = sorted((s.value / s.count, s.count) for s in out.samples if s.kpi == "latency_ms")
    assert [round(v, 6) for v, _ in latency] == [25.0, 75.0, 300.0, 500.0]
    assert [n for _, n in latency] == [5.0, 3.0, 1.0, 1.0]
    assert [s.value for s in out.samples if s.kpi == "requests"] == [10.0]
    second = request((SHOP, [histogram(name, [6, 3, 1, 2], bounds, 2.0, T0 + MIN, T0 - MIN)]))
    out = samples_of(second, state)
    assert sorted((s.kpi, s.value / s.count, s.count) for s in out.samples) == [
        ("latency_ms", 25.0, 1.0),
        ("latency_ms", 500.0, 1.0),
        ("requests", 2.0, 1.0),
    ]


def test_histogram_of_a_mean_stream_gives_sum_and_count() -> None:
    out = samples_of(
        request((SHOP, [histogram("cart_value", [2, 2], [50.0], 180.0, T0, 0, DELTA)])), {}
    )
    assert [(s.kpi, s.value, s.count) for s in out.samples] == [("cart_value", 180.0, 4.0)]


def test_unmapped_and_unsupported_metrics_are_counted_not_converted() -> None:
    expo = Metric(
        name="shop.orders",
        exponential_histogram=ExponentialHistogram(
            data_points=[ExponentialHistogramDataPoint(time_unix_nano=T0, count=1)]
        ),
    )
    req = request((SHOP, [counter("process.cpu.time", 5, T0, T0 - MIN), expo]))
    decoded = decode_request(req.SerializeToString(), max_bytes=1 << 20)
    assert not isinstance(decoded, Rejected)
    points, skipped = points_of(decoded)
    assert skipped == {"unsupported": 1}
    out = convert("shop", points, CATALOG, {})
    assert out.samples == [] and out.outcomes == {"unmapped": 1}


def test_default_mapping_by_name_and_catalog_otlp_table() -> None:
    catalog = parse_catalog(
        """
[[kpi]]
name = "signups"
aggregation = "sum"
[[kpi]]
name = "checkout_ms"
aggregation = "mean"
[otlp]
labels = ["tier"]
max_series = 2
[otlp.metrics]
"app.checkout.duration" = { stream = "checkout_ms", scale = 1000 }
"""
    )
    assert catalog.otlp_target("signups") is not None
    assert catalog.otlp_target("checkout-ms") is not None  # "-" read as "_"
    assert catalog.otlp_target("app.checkout.duration").scale == 1000.0  # type: ignore[union-attr]
    assert catalog.otlp_target("other") is None
    old = T0 - 3600 * 10**9
    state: dict[str, Any] = {}
    for i in range(3):  # three series, two remembered: the least recently updated is forgotten
        req = request((SHOP, [counter("signups", 1, T0 + i, old, {"tier": f"t{i}"})]))
        d = decode_request(req.SerializeToString(), max_bytes=1 << 20)
        assert not isinstance(d, Rejected)
        convert("shop", points_of(d)[0], catalog, state)
    assert len(state) == 2 and min(v[1] for v in state.values()) == T0 + 1


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[otlp]\nlabelz = ["a"]', "unknown key 'labelz'"),
        ('[otlp.metrics]\n"a.b" = { scale = 2 }', "field 'stream': missing"),
        ('[otlp.metrics]\n"a.b" = { stream = "x", scale = -1 }', "field 'scale'"),
        ('[otlp.metrics]\n"a.b" = 3', "must be a stream name or a table"),
        ('[otlp]\nfirst_point_window = "soon"', "first_point_window"),
    ],
)
def test_catalog_otlp_errors_name_the_field(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_catalog('[[kpi]]\nname = "orders"\naggregation = "sum"\n' + table)
