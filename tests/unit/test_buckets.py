"""Event-time buckets: placement, lateness, ratio sums, quantile sketches, scopes and eviction."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest

from stream_app.core.buckets import (
    ServiceBuckets,
    StreamLayout,
    decode_sketch,
    encode_sketch,
    layouts_for,
    sketch_key,
    sketch_quantile,
)
from stream_app.core.catalog import load_catalog

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 3600)  # an hour boundary
W = 60.0


def store(
    *,
    lateness: float = 120.0,
    retention: float = 3600.0,
    labels: tuple[str, ...] = ("region",),
    max_values: int = 3,
) -> ServiceBuckets:
    layouts = {
        "orders": StreamLayout(W, False),
        "sessions": StreamLayout(W, False),
        "latency_ms": StreamLayout(W, True),
    }
    return ServiceBuckets(
        layouts,
        lateness=lateness,
        retention=retention,
        scope_labels=labels,
        max_label_values=max_values,
    )


def idx(t: float) -> int:
    return int(t // W)


def test_samples_land_in_their_event_time_bucket_not_arrival_order() -> None:
    b = store()
    # Arrival order differs from event time; both still within the allowed lateness.
    assert b.add("orders", T0 + 130, 5.0) == "accepted"
    assert b.add("orders", T0 + 10, 2.0) == "accepted"
    assert b.add("orders", T0 + 70, 3.0, count=3.0) == "accepted"
    r = b.read("orders", "", idx(T0), idx(T0) + 3)
    assert r.sums == [2.0, 3.0, 5.0]
    assert r.counts == [1.0, 3.0, 1.0]


def test_sample_behind_the_watermark_is_late_and_not_counted() -> None:
    b = store(lateness=120.0)
    b.add("orders", T0 + 600, 1.0)  # watermark = T0 + 480
    assert b.watermark == T0 + 480
    assert b.add("orders", T0 + 479, 7.0) == "late"  # its bucket [420, 480) is closed
    assert b.add("orders", T0 + 481, 7.0) == "accepted"  # bucket [480, 540) still open
    r = b.read("orders", "", idx(T0 + 420), idx(T0 + 420) + 2)
    assert r.sums == [0.0, 7.0]


def test_releases_move_the_watermark_too() -> None:
    b = store(lateness=60.0)
    b.observe(T0 + 1000)
    assert b.watermark == T0 + 940
    assert b.add("orders", T0 + 100, 1.0) == "late"


def test_ratio_streams_keep_separate_sums() -> None:
    b = store()
    for s in range(0, 120, 10):
        b.add("sessions", T0 + s, 4.0)
        b.add("orders", T0 + s, 1.0 if s < 60 else 0.0)
    num = b.read("orders", "", idx(T0), idx(T0) + 2)
    den = b.read("sessions", "", idx(T0), idx(T0) + 2)
    assert num.sums == [6.0, 0.0] and den.sums == [24.0, 24.0]
    assert sum(num.sums) / sum(den.sums) == pytest.approx(6 / 48)


def test_unknown_stream_and_invalid_values_are_rejected() -> None:
    b = store()
    assert b.add("clicks", T0, 1.0) == "unknown-stream"
    assert b.add("orders", T0, float("nan")) == "invalid-value"
    assert b.add("orders", float("inf"), 1.0) == "invalid-value"
    assert b.add("orders", T0, 1.0, count=-1.0) == "invalid-value"
    assert b.max_time is None  # rejected samples do not move the watermark


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_quantile_of_a_bucket_is_within_two_percent(q: float) -> None:
    rng = random.Random(7)
    b = store()
    values = [rng.lognormvariate(4.0, 0.8) for _ in range(5000)]
    for i, v in enumerate(values):
        b.add("latency_ms", T0 + (i % 600) / 10, v)  # all in the first bucket
    got = b.read("latency_ms", "", idx(T0), idx(T0) + 1, q=q).quantiles
    assert got is not None and got[0] is not None
    exact = float(np.quantile(values, q))
    assert got[0] == pytest.approx(exact, rel=0.02)


def test_sketch_survives_compaction_and_a_dump_exactly() -> None:
    b = store(lateness=0.0)
    rng = random.Random(3)
    for i in range(300):
        b.add("latency_ms", T0 + i / 10, rng.uniform(5, 500))
    before = b.read("latency_ms", "", idx(T0), idx(T0) + 1, q=0.95).quantiles
    b.add("orders", T0 + 3600, 1.0)  # watermark passes the first bucket
    assert b.compact() >= 1
    after = b.read("latency_ms", "", idx(T0), idx(T0) + 1, q=0.95).quantiles
    copy = store(lateness=0.0)
    copy.load(b.dump())
    restored = copy.read("latency_ms", "", idx(T0), idx(T0) + 1, q=0.95).quantiles
    assert before == after == restored


def test_sketch_encoding_is_lossless() -> None:
    bins = {sketch_key(x): w for x, w in [(-3.0, 2.0), (0.0, 1.0), (1e-3, 4.0), (250.0, 7.0)]}
    keys, weights = decode_sketch(encode_sketch(bins))
    assert dict(zip(keys, weights, strict=True)) == bins
    fractional = {sketch_key(10.0): 0.25, sketch_key(20.0): 1.5}
    keys, weights = decode_sketch(encode_sketch(fractional))
    assert dict(zip(keys, weights, strict=True)) == fractional
    # Negative, zero and positive values keep their order.
    assert sketch_quantile(sorted(bins), [bins[k] for k in sorted(bins)], 0.0) == pytest.approx(
        -3.0, rel=0.01
    )


def test_pre_aggregated_sample_counts_as_count_observations_of_its_mean() -> None:
    b = store()
    b.add("latency_ms", T0, 1000.0, count=10.0)  # ten requests averaging 100 ms
    b.add("latency_ms", T0 + 1, 500.0)
    r = b.read("latency_ms", "", idx(T0), idx(T0) + 1, q=0.5)
    assert r.counts == [11.0]
    assert r.quantiles is not None and r.quantiles[0] == pytest.approx(100.0, rel=0.01)


def test_labels_fill_scope_buckets_and_the_rest_is_all_minus_scope() -> None:
    b = store()
    b.add("orders", T0, 3.0, labels={"region": "eu"})
    b.add("orders", T0 + 1, 5.0, labels={"region": "us"})
    b.add("orders", T0 + 2, 1.0, labels={"tier": "gold"})  # not a scope label: only in ""
    assert b.scopes("orders") == ["", "region=eu", "region=us"]
    assert b.read("orders", "", idx(T0), idx(T0) + 1).sums == [9.0]
    assert b.read("orders", "region=eu", idx(T0), idx(T0) + 1).sums == [3.0]
    rest = b.read("orders", "", idx(T0), idx(T0) + 1, minus_scope="region=eu")
    assert rest.sums == [6.0] and rest.counts == [2.0]


def test_too_many_label_values_are_rejected_whole() -> None:
    b = store(max_values=2)
    assert b.add("orders", T0, 1.0, labels={"region": "eu"}) == "accepted"
    assert b.add("orders", T0, 1.0, labels={"region": "us"}) == "accepted"
    assert b.add("orders", T0, 1.0, labels={"region": "eu"}) == "accepted"  # known value
    assert b.add("orders", T0, 1.0, labels={"region": "ap"}) == "too-many-label-values"
    assert b.read("orders", "", idx(T0), idx(T0) + 1).sums == [3.0]


def test_eviction_drops_old_buckets_and_frees_label_values() -> None:
    b = store(lateness=0.0, retention=2 * 3600.0, max_values=1)
    for m in range(0, 180):
        b.add("orders", T0 + 60 * m, 1.0, labels={"region": "eu"})
        b.add("latency_ms", T0 + 60 * m, 10.0)
    b.compact()
    slots = b.bucket_slots()
    # Far ahead: everything before watermark - retention goes.
    assert b.add("orders", T0 + 10 * 3600, 1.0, labels={"region": "us"}) == "too-many-label-values"
    b.observe(T0 + 10 * 3600)
    assert b.evict() > 0
    assert b.bucket_slots() < slots
    assert b.read("orders", "", idx(T0), idx(T0) + 180).sums == [0.0] * 180
    # The old region's buckets are gone, so a new region value fits under the limit again.
    assert b.add("orders", T0 + 10 * 3600, 1.0, labels={"region": "us"}) == "accepted"


def test_reads_mask_history_behind_the_horizon_even_before_eviction() -> None:
    b = store(lateness=0.0, retention=3600.0)
    b.add("orders", T0, 4.0)
    b.add("orders", T0 + 2 * 3600, 1.0)  # horizon = T0 + 3600
    assert b.read("orders", "", idx(T0), idx(T0) + 1).sums == [0.0]
    # A caller judging as of an earlier moment sees the bucket still.
    assert b.read("orders", "", idx(T0), idx(T0) + 1, horizon=T0 - 1).sums == [4.0]


def test_dump_and_load_give_the_same_buckets_and_watermark() -> None:
    b = store()
    rng = random.Random(11)
    for i in range(2000):
        t = T0 + i * 3
        b.add("orders", t, float(rng.randint(0, 3)), labels={"region": rng.choice(["eu", "us"])})
        b.add("latency_ms", t, rng.uniform(1, 900))
    b.compact()
    copy = store()
    copy.load(b.dump())
    assert copy.watermark == b.watermark
    assert copy.scopes("orders") == b.scopes("orders")
    lo, hi = idx(T0), idx(T0 + 6000)
    for scope in ("", "region=eu"):
        assert copy.read("orders", scope, lo, hi) == b.read("orders", scope, lo, hi)
    assert copy.read("latency_ms", "", lo, hi, q=0.9) == b.read("latency_ms", "", lo, hi, q=0.9)


def test_a_retained_bucket_costs_well_under_100_bytes() -> None:
    b = store(labels=())
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    n = 20_000
    for m in range(n):
        b.add("orders", T0 + 60 * m, 1.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown / n < 100


def test_layouts_come_from_the_catalog_kpis_of_the_service() -> None:
    layouts = layouts_for(load_catalog(None), "shop")
    assert layouts["latency_ms"] == StreamLayout(60.0, True)
    assert layouts["sessions"] == StreamLayout(60.0, False)
    assert set(layouts) == {
        "orders",
        "revenue",
        "sessions",
        "cart_value",
        "latency_ms",
        "errors",
        "requests",
    }
