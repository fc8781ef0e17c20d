"""OTLP metrics end to end on the real broker: Collector-shaped records -> buckets and verdicts.

The simulated shop of the impact e2e test (a bad checkout release, a neutral search release) is
turned into what an OpenTelemetry SDK exports: cumulative counters per region, a histogram without
buckets for the cart value (sum and count) and a bucketed latency histogram (a quantile KPI). The
requests go to the OTLP topic as the Collector's Kafka exporter writes them: checkout's as
otlp_proto keyed by a 16-byte hash of its resource attributes
(``partition_metrics_by_resource_attributes: true``), search's as otlp_json with no key (the
exporter's default). The worker re-keys and converts them; its verdicts must equal an offline
replay of the same conversion, the bad release must be degraded, and bad payloads dead-lettered.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from bisect import bisect_left
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from stream_app import codec, simulate
from stream_app.codec import Rejected
from stream_app.core.catalog import load_catalog
from stream_app.core.otlp import convert
from stream_app.events.model import KpiSample, Release
from stream_app.events.otlp import decode_request, points_of
from stream_app.pipeline import Pipeline
from stream_app.producer import Sender, ensure_topics
from stream_app.replay import ReplayOutcome, replay
from stream_app.settings import Settings
from tests.integration.test_impact_e2e import _finals, _read_impact, e2e_scenario
from tests.integration.workerproc import WorkerProc, consume_all, start_worker, topic_env

pytestmark = pytest.mark.integration

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
COUNTERS = {  # sample stream -> OTLP metric name (the bundled catalog's [otlp.metrics])
    "orders": "shop.orders",
    "sessions": "shop.sessions",
    "revenue": "shop.revenue",
    "errors": "shop.errors",
    "requests": "requests",  # mapped by name
}
LATENCY_BOUNDS = [50.0, 75.0, 100.0, 125.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 1000.0]


def _attrs(attrs: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs.items()]


class FakeSdk:
    """What an OpenTelemetry SDK of one service exports: cumulative series since its start."""

    def __init__(self, service: str, start: float) -> None:
        self.resource = {
            "service.name": service,
            "service.instance.id": uuid.uuid4().hex,
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
        }
        self.start_ns = int(start * 1e9) - 10**9  # the process started a second before
        self.totals: dict[tuple[str, str], float] = defaultdict(float)
        self.hist: dict[tuple[str, str], list[float]] = {}

    def key(self) -> bytes:
        """16 bytes from all resource attributes (the exporter's partitioning by resource)."""
        return hashlib.md5(orjson.dumps(sorted(self.resource.items()))).digest()

    def export(self, t: float, samples: list[KpiSample]) -> ExportMetricsServiceRequest:
        for s in samples:
            region = s.labels.get("region", "")
            if s.kpi in COUNTERS:
                self.totals[(s.kpi, region)] += s.value
            elif s.kpi == "cart_value":
                h = self.hist.setdefault((s.kpi, region), [0.0, 0.0])
                h[0] += s.count
                h[1] += s.value
            elif s.kpi == "latency_ms":
                h = self.hist.setdefault((s.kpi, region), [0.0] * (len(LATENCY_BOUNDS) + 3))
                h[0] += s.count
                h[1] += s.value
                h[2 + bisect_left(LATENCY_BOUNDS, s.value / s.count)] += s.count
        t_ns = round(t * 1e9)
        metrics: list[Metric] = []
        for stream, name in COUNTERS.items():
            points = [
                NumberDataPoint(
                    start_time_unix_nano=self.start_ns,
                    time_unix_nano=t_ns,
                    as_double=total,
                    attributes=_attrs({"region": region}),
                )
                for (kpi, region), total in sorted(self.totals.items())
                if kpi == stream
            ]
            if points:
                sum_ = Sum(
                    aggregation_temporality=CUMULATIVE, is_monotonic=True, data_points=points
                )
                metrics.append(Metric(name=name, unit="1", sum=sum_))
        for stream, name in (("cart_value", "shop.cart.value"), ("latency_ms", "latency_ms")):
            hpoints = []
            for (kpi, region), h in sorted(self.hist.items()):
                if kpi != stream:
                    continue
                point = HistogramDataPoint(
                    start_time_unix_nano=self.start_ns,
                    time_unix_nano=t_ns,
                    count=int(h[0]),
                    sum=h[1],
                    attributes=_attrs({"region": region}),
                )
                if stream == "latency_ms":
                    point.explicit_bounds.extend(LATENCY_BOUNDS)
                    point.bucket_counts.extend(int(c) for c in h[2 : 2 + len(LATENCY_BOUNDS) + 1])
                hpoints.append(point)
            if hpoints:
                hist = Histogram(aggregation_temporality=CUMULATIVE, data_points=hpoints)
                metrics.append(Metric(name=name, histogram=hist))
        return ExportMetricsServiceRequest(
            resource_metrics=[
                ResourceMetrics(
                    resource=Resource(attributes=_attrs(self.resource)),
                    scope_metrics=[ScopeMetrics(metrics=metrics)],
                )
            ]
        )


@pytest.mark.timeout(600)
def test_otlp_metrics_in_both_encodings_reach_buckets_and_verdicts(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = list(simulate.generate(e2e_scenario()))
    releases = [e for e in events if isinstance(e, Release)]
    # The releases' windows (4 h before, the 4 h horizon after) and the same hours a day earlier
    # (the judge's reference), continuously: the rest of the history would only make a loaded
    # 2-core machine slower.
    first, last = min(r.time for r in releases), max(r.time for r in releases)
    by_time: dict[tuple[str, float], list[KpiSample]] = defaultdict(list)
    for e in events:
        if isinstance(e, KpiSample) and first - 86400 - 5 * 3600 <= e.time <= last + 5 * 3600:
            by_time[(e.service, e.time)].append(e)
    sdks = {s: FakeSdk(s, min(t for (x, t) in by_time if x == s)) for s in ("checkout", "search")}
    # (service, encoding, key, value) in the order an SDK exports them
    records: list[tuple[str, bytes | None, bytes]] = []
    for (service, t), samples in sorted(by_time.items(), key=lambda kv: kv[0][1]):
        req = sdks[service].export(t, samples)
        if service == "checkout":
            records.append((service, sdks[service].key(), req.SerializeToString()))
        else:
            doc = json_format.MessageToDict(req, use_integers_for_enums=True)
            records.append((service, None, orjson.dumps(doc)))
    assert any(r[2][:1] == b"{" for r in records) and any(r[2][:1] != b"{" for r in records)

    # The reference: the same conversion and the same core, offline.
    catalog = load_catalog()
    state: dict[str, dict[str, Any]] = defaultdict(dict)
    converted: list[KpiSample] = []
    for service, _, value in records:
        req = decode_request(value, max_bytes=1 << 20)
        assert not isinstance(req, Rejected)
        converted += convert(service, points_of(req)[0], catalog, state[service]).samples
    expected = _finals(
        [
            orjson.loads(codec.encode_verdict(r))
            for r in replay([*releases, *converted], Pipeline(catalog), ReplayOutcome()).verdicts
        ]
    )
    bad = next(r for r in releases if r.service == "checkout")
    neutral = next(r for r in releases if r.service == "search")
    assert expected[(bad.id, "conversion")]["verdict"] == "degraded"
    assert expected[(neutral.id, "conversion")]["verdict"] != "degraded"
    assert {k for (_, k) in expected} >= {"orders", "conversion", "cart_value", "latency_p95"}

    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix), "VALUELOOP_APP_ID": f"{prefix}-app"}
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        **{k[len("VALUELOOP_") :].lower(): v for k, v in env.items()},
    )
    assert {r.name for r in ensure_topics(settings)} >= {settings.topic_otlp}
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{prefix}-reader",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.topic_impact])
    worker = start_worker(kafka_bootstrap, env, tmp_path)
    try:
        sender = Sender(settings)
        for r in releases:
            sender.send(settings.topic_deployments, codec.encode(r), codec.key_of(r))
        sender.flush(30)
        p = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
        for _service, key, value in records:
            if key is not None:
                p.produce(settings.topic_otlp, value=value, key=key)
            else:
                # No key, as the exporter writes by default. Which partition a keyless record
                # lands on is the producer's choice; this one keeps search's on one partition, so
                # its points are read in the order they were exported (see the README's limits).
                p.produce(settings.topic_otlp, value=value, partition=1)
        # Bad payloads: not OTLP at all, and a request whose resource names no service.
        no_service = ExportMetricsServiceRequest(
            resource_metrics=[ResourceMetrics(resource=Resource(attributes=_attrs({"a": "b"})))]
        )
        p.produce(settings.topic_otlp, value=b"\xff\x00 not a protobuf")
        p.produce(settings.topic_otlp, value=no_service.SerializeToString())
        assert p.flush(60) == 0

        seen: list[dict[str, Any]] = []
        _read_impact(consumer, seen, len(expected), 400, worker)
        got = _finals(seen)
        progress = [
            ln
            for ln in worker.metrics().splitlines()
            if ln.startswith(("valueloop_otlp", "valueloop_samples", "valueloop_events_accepted"))
        ]
        assert set(got) == set(expected), (progress, worker.tail())
        for key, want in expected.items():
            for field in ("service", "verdict", "baseline_value", "post_value", "change"):
                assert got[key][field] == want[field], (key, field, got[key], want)
        worker.wait_for(
            "valueloop_release_degraded", 1, service="checkout", kpi="conversion", phase="final"
        )
        assert (
            worker.metric(
                "valueloop_release_degraded", service="search", kpi="conversion", phase="final"
            )
            == 0
        )

        # Each service's samples are in its own buckets, with the offline conversion's totals
        # (the simulated history is shorter than the retention: every bucket is still there).
        worker.wait_for("valueloop_samples_total", len(converted), timeout=120, outcome="accepted")
        totals = orjson.loads(worker.get("/state/totals")[1])
        for service in ("checkout", "search"):
            for stream in ("orders", "latency_ms", "requests"):
                want_sum = sum(
                    s.value for s in converted if s.service == service and s.kpi == stream
                )
                have = totals[service][f"{stream}/"]["sum"]  # the all-traffic scope
                diag = [
                    ln
                    for ln in worker.metrics().splitlines()
                    if ln.startswith(("valueloop_otlp", "valueloop_samples", "valueloop_events"))
                ]
                assert have == pytest.approx(want_sum, rel=1e-9), (service, stream, diag)
        assert worker.metric("valueloop_otlp_points_total", outcome="first") > 0
        assert worker.metric("valueloop_otlp_points_total", outcome="converted") > 0
        assert worker.metric("valueloop_events_accepted_total", topic="otlp") == len(records)

        dead = consume_all(kafka_bootstrap, settings.topic_deadletter, 2)
        reasons = sorted(
            dict(m.headers())["valueloop.reason"].decode()  # type: ignore[attr-defined]
            for m in dead
        )
        assert reasons == ["no-service", "not-otlp"]
        for m in dead:
            h = dict(m.headers())  # type: ignore[attr-defined]
            assert h["valueloop.source.topic"] == settings.topic_otlp.encode()
            assert h["valueloop.detail"]
        worker.wait_for("valueloop_events_rejected_total", 1, topic="otlp", reason="not-otlp")
    finally:
        worker.stop()
        consumer.close()


def test_cumulative_series_state_survives_a_worker_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A restarted worker goes on from the stored series state: no point is counted twice
    (its first point would count in full) and none is lost (it would be only a baseline)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix), "VALUELOOP_APP_ID": f"{prefix}-app"}
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        **{k[len("VALUELOOP_") :].lower(): v for k, v in env.items()},
    )
    ensure_topics(settings)
    now = time.time()
    sdk = FakeSdk("checkout", now - 1800)
    sdk.start_ns -= 3600 * 10**9  # a process up for an hour: its first point is the baseline
    increments = [100.0, 5.0, 7.0, 11.0, 13.0, 17.0]
    requests = []
    for i, n in enumerate(increments):
        sample = KpiSample("checkout", "orders", now - 1800 + 60 * i, n, 1.0, {"region": "eu"})
        requests.append(sdk.export(sample.time, [sample]).SerializeToString())
    want = sum(increments[1:])  # the first point is the baseline

    def produce(batch: list[bytes]) -> None:
        p = Producer({"bootstrap.servers": kafka_bootstrap})
        for value in batch:
            p.produce(settings.topic_otlp, value=value, key=sdk.key())
        assert p.flush(30) == 0

    def orders(worker: WorkerProc, want: float) -> float:
        deadline = time.monotonic() + 60
        have = None
        while time.monotonic() < deadline:
            totals = orjson.loads(worker.get("/state/totals")[1])
            have = totals.get("checkout", {}).get("orders/", {}).get("sum")
            if have == want:
                break
            time.sleep(0.5)
        return float(have or 0.0)

    worker = start_worker(kafka_bootstrap, env, tmp_path)
    try:
        produce(requests[:3])
        assert orders(worker, sum(increments[1:3])) == sum(increments[1:3])
        worker.wait_for("valueloop_state_flushed_timestamp_seconds", time.time() + 0.5)
        time.sleep(2)  # past the offset commit interval
    finally:
        worker.stop()
    worker = start_worker(kafka_bootstrap, env, tmp_path)
    try:
        produce(requests[3:])
        assert orders(worker, want) == want, worker.tail()
        assert worker.metric("valueloop_otlp_points_total", outcome="baseline") == 0
        assert worker.metric("valueloop_otlp_points_total", outcome="first") == 0
    finally:
        worker.stop()
