"""Product-level KPIs on the real broker: 2 workers, 6 partitions, releases of three services of
one product judged against the product's conversion, as `valueloop replay` judges them."""

from __future__ import annotations

import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer

import stream_app
from stream_app import codec
from stream_app.core.catalog import parse_catalog
from stream_app.core.valuestream import load_valuestream
from stream_app.events.model import KpiSample, Release
from stream_app.pipeline import Pipeline
from stream_app.producer import Sender, ensure_topics
from stream_app.replay import ReplayOutcome, replay
from stream_app.settings import Settings
from tests.integration.workerproc import WorkerProc, launch, topic_env

T0 = 1717999200.0  # Monday 2024-06-10 06:00 UTC
MIN = 60.0
SERVICES = ("search", "cart", "checkout")
KPIS = """
[defaults]
baseline = "2h"
post = "10m"
max_horizon = "1h"
overlap = "30m"
bucket = "1m"
allowed_lateness = "2m"
min_buckets = 10
min_samples = 30
seasonality = "none"

[[kpi]]
name = "conversion"
aggregation = "ratio"
numerator = "orders"
denominator = "sessions"
level = "product"
critical = true

[[kpi]]
name = "latency_p95"
aggregation = "quantile"
stream = "latency_ms"
quantile = 0.95
direction = "down"
"""
# The bundled value-stream definition, with one product of three services.
VALUESTREAM = (
    (Path(stream_app.__file__).parent / "data" / "valuestream.toml")
    .read_text()
    .replace("[value_streams]\n", '[value_streams]\nshop = ["search", "cart", "checkout"]\n', 1)
)


def shop_events() -> list[codec.Decoded]:
    """Ten hours of one shop: search drops conversion by 20 % at 3 h, cart and checkout release
    15 minutes apart at 6 h (cart lifts it by 10 %), every service reports its own latency."""
    rng = random.Random(7)
    releases = [
        Release("rel-search", "search", "2.7.0", T0 + 180 * MIN, "deployed"),
        Release("rel-cart", "cart", "1.3.0", T0 + 360 * MIN, "deployed"),
        Release("rel-checkout", "checkout", "4.0.1", T0 + 375 * MIN, "deployed"),
    ]
    out: list[codec.Decoded] = list(releases)
    for m in range(600):
        t = T0 + m * MIN
        p = 0.05 * (0.8 if m >= 180 else 1.0) * (1.1 if m >= 360 else 1.0)
        sessions = 900 + rng.randint(-30, 30)
        orders = sum(1 for _ in range(sessions) if rng.random() < p)
        out.append(KpiSample("web", "sessions", t, sessions, sessions, product="shop"))
        out.append(KpiSample("web", "orders", t, orders, orders, product="shop"))
        for svc in SERVICES:
            for _ in range(4):
                out.append(KpiSample(svc, "latency_ms", t, 100.0 + rng.gauss(0, 5), 1.0))
    return sorted(out, key=lambda e: e.time)


def finals(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for v in records:
        key = (v["release_id"], v["kpi"])
        if v["phase"] == "final" and v["revision"] >= out.get(key, {}).get("revision", 0):
            out[key] = v
    return out


def test_releases_of_three_services_are_judged_on_the_products_conversion(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    (tmp_path / "kpis.toml").write_text(KPIS)
    (tmp_path / "valuestream.toml").write_text(VALUESTREAM)
    env = {
        **topic_env(prefix),
        "VALUELOOP_APP_ID": f"{prefix}-app",
        "VALUELOOP_TOPIC_PARTITIONS": "6",
        "VALUELOOP_KPIS_FILE": str(tmp_path / "kpis.toml"),
        "VALUELOOP_VALUESTREAM_FILE": str(tmp_path / "valuestream.toml"),
    }
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        **{k[len("VALUELOOP_") :].lower(): v for k, v in env.items()},
    )
    ensure_topics(settings)
    topics = settings.topic_names()
    events = shop_events()
    catalog = parse_catalog(KPIS)
    vs = load_valuestream(tmp_path / "valuestream.toml")
    expected = finals(
        [
            orjson.loads(codec.encode_verdict(r))
            for r in replay(events, Pipeline(catalog, vs), ReplayOutcome()).verdicts
        ]
    )
    conv = {
        rid: expected[(rid, "conversion")] for rid in ("rel-search", "rel-cart", "rel-checkout")
    }
    assert conv["rel-search"]["verdict"] == "degraded"
    assert conv["rel-cart"]["verdict"] == "confounded"
    assert conv["rel-cart"]["confounders"] == ["rel-checkout"]
    assert conv["rel-checkout"]["confounders"] == ["rel-cart"]
    assert {v["product"] for v in expected.values()} == {"shop"}

    sender = Sender(settings)

    def produce(batch: list[codec.Decoded]) -> None:
        for e in batch:
            sender.send(topics[codec.role_of(e)], codec.encode(e), codec.key_of(e))
        sender.flush(60)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{prefix}-reader",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topics["impact"]])
    workers: list[WorkerProc] = []
    seen: list[dict[str, Any]] = []
    try:
        for _ in range(2):
            w = launch(kafka_bootstrap, env, tmp_path, data="data-{port}", kind=WorkerProc)
            workers.append(w)
        for w in workers:
            w.wait_ready(120)

        def total(name: str, **labels: str) -> float:
            return sum(w.metric(name, **labels) for w in workers if w.alive())

        def wait_total(name: str, value: float, timeout: float, **labels: str) -> None:
            deadline = time.monotonic() + timeout
            while total(name, **labels) < value and time.monotonic() < deadline:
                assert all(w.alive() for w in workers), [w.tail() for w in workers]
                time.sleep(0.5)
            assert total(name, **labels) >= value, (name, labels, [w.tail() for w in workers])

        # Releases first: each reaches its service's partition, then its product's (forwarded).
        releases = [e for e in events if isinstance(e, Release)]
        produce(releases)
        wait_total("valueloop_events_accepted_total", 3, 120, topic="product-releases")
        samples = [e for e in events if not isinstance(e, Release)]
        half = len(samples) // 2
        produce(samples[:half])
        wait_total("valueloop_events_accepted_total", half, 180, topic="telemetry")
        # The search release's final verdict on the shop's conversion, from whichever worker
        # owns the shop's partition (its series carry product, service and KPI).
        wait_total(
            "valueloop_release_degraded",
            1,
            120,
            product="shop",
            service="search",
            kpi="conversion",
            phase="final",
        )
        time.sleep(3)  # a state flush (every 2 s) and an offset commit after it
        # The worker holding the shop's state dies without a goodbye; the other takes its
        # partitions over and resumes the shop's state from the changelog.
        owner = [
            w
            for w in workers
            if w.metric("valueloop_watermark_timestamp_seconds", service="product:shop") > 0
        ]
        assert len(owner) == 1, [w.tail() for w in workers]
        owner[0].stop(signal.SIGKILL)
        workers = [w for w in workers if w is not owner[0]]
        produce(samples[half:])
        deadline = time.monotonic() + 300
        while len(finals(seen)) < len(expected) and time.monotonic() < deadline:
            assert workers[0].alive(), workers[0].tail()
            m = consumer.poll(0.5)
            if m is not None and not m.error():
                seen.append(orjson.loads(m.value()))
        # Late revisions (a confounder read after a final verdict) come after: read a bit more.
        until = time.monotonic() + 5
        while time.monotonic() < until:
            m = consumer.poll(0.5)
            if m is not None and not m.error():
                seen.append(orjson.loads(m.value()))
        got = finals(seen)
        assert set(got) == set(expected), (sorted(got), sorted(expected), workers[0].tail())
        for key, want in expected.items():
            have = got[key]
            for field in ("verdict", "reason_code", "confounders", "product", "service", "kpi"):
                assert have[field] == want[field], (key, field, have[field], want[field])
        # The survivor resumed the shop's state from the changelog, not from scratch.
        assert workers[0].metric("valueloop_state_restored_services_total") >= 1
    finally:
        for w in workers:
            w.stop()
        consumer.close()
