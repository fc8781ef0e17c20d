"""Measurements that run in a fresh interpreter each: ``python -m bench.probes NAME ARGS...``.

Each prints one JSON object as its last line. A fresh process per figure keeps one figure's heap,
garbage-collector state and imports out of the next one's numbers.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

from stream_app import codec

BATCH = 10_000


def floor_confluent(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    """A raw confluent-kafka consumer reading `n` messages of `topic` and decoding each."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-floor-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 10_485_760,
        }
    )
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    decode = codec.decode
    got = rejected = 0
    t0 = time.perf_counter()
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    try:
        while got < n:
            for m in c.consume(BATCH, 1.0):
                if m.error():
                    continue
                # As the worker does: value and headers (a list of (str, bytes) at runtime).
                headers: Any = m.headers()
                if isinstance(decode("telemetry", m.value(), headers), codec.Rejected):
                    rejected += 1
                got += 1
    finally:
        elapsed = time.perf_counter() - t0
        c.close()
    return {"events": got, "rejected": rejected, "seconds": elapsed, "per_s": got / elapsed}


def floor_aiokafka(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    """A raw aiokafka consumer (faust's client) reading `n` messages and decoding each."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> dict[str, Any]:
        c = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=10_485_760,
            fetch_max_bytes=52_428_800,
        )
        await c.start()
        decode = codec.decode
        got = rejected = 0
        try:
            parts = c.partitions_for_topic(topic)
            if not parts:
                await c._client.force_metadata_update()
                parts = c.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            t0 = time.perf_counter()
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            while got < n:
                batches = await c.getmany(timeout_ms=1000, max_records=BATCH)
                for msgs in batches.values():
                    for m in msgs:
                        if isinstance(decode("telemetry", m.value, m.headers), codec.Rejected):
                            rejected += 1
                        got += 1
            elapsed = time.perf_counter() - t0
        finally:
            await c.stop()
        return {"events": got, "rejected": rejected, "seconds": elapsed, "per_s": got / elapsed}

    return asyncio.run(run())


def decode_only(n: int, services: int) -> dict[str, Any]:
    """`codec.decode` alone over `n` telemetry values held in memory (no Kafka)."""
    from bench.common import telemetry

    values = [codec.encode(s) for s in telemetry(n, services)]
    decode = codec.decode
    t0 = time.perf_counter()
    for v in values:
        decode("telemetry", v, None)
    elapsed = time.perf_counter() - t0
    mean = sum(map(len, values)) / len(values)
    return {"events": n, "seconds": elapsed, "per_s": n / elapsed, "mean_bytes": mean}


def memory(services: int, hours: float, mode: str) -> dict[str, Any]:
    """An ImpactEngine fed `hours` of every stream and region of `services` services.

    ``mode`` "tracemalloc": the bytes Python allocated for the engine and still holds, over all
    retained buckets. "rss": the growth of the resident set (allocator slack included) while the
    second half of the hours is fed, over the buckets that half added: the first half soaks up
    memory the process had already freed, which would hide part of the cost.
    """
    from bench.common import STREAMS, samples_per_minute, telemetry
    from stream_app.core.catalog import load_catalog
    from stream_app.core.impact import ImpactEngine

    n = int(samples_per_minute(services) * hours * 60)
    # The engine (and the judge, numpy and scipy it imports) exists before measuring: only what
    # the samples add is counted.
    engine = ImpactEngine(load_catalog())

    def buckets() -> tuple[int, int]:
        totals = engine.bucket_totals()
        return (
            sum(int(v["buckets"]) for per in totals.values() for v in per.values()),
            sum(len(per) for per in totals.values()),
        )

    samples = telemetry(n, services)  # made one at a time: only the engine stays
    gc.collect()
    t0 = time.perf_counter()
    if mode == "tracemalloc":
        tracemalloc.start()
        before, first = tracemalloc.get_traced_memory()[0], 0
    else:
        for s in islice(samples, n // 2):
            engine.on_sample(s)
            engine.advance(s.service)
        gc.collect()
        before, first = _rss(), buckets()[0]
    for s in samples:
        engine.on_sample(s)
        engine.advance(s.service)
    elapsed = time.perf_counter() - t0
    gc.collect()
    if mode == "tracemalloc":
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    else:
        after = _rss()
    total, series = buckets()
    used = after - before
    counted = total - first
    return {
        "mode": mode,
        "services": services,
        "streams": len(STREAMS),
        "hours": hours,
        "samples": n,
        "series": series,
        "buckets": total,
        "buckets_measured": counted,
        "bytes": used,
        "bytes_per_bucket": used / counted if counted else None,
        "feed_per_s": n / elapsed,
    }


def _rss() -> int:
    with open("/proc/self/statm", encoding="utf-8") as fh:
        pages = int(fh.read().split()[1])
    import resource

    return pages * resource.getpagesize()


def replay_inproc(path: str, one_by_one: str = "1") -> dict[str, Any]:
    """The replay loop in process: decoding the file, then the Pipeline (batched and one by one)."""
    from stream_app.core.catalog import load_catalog
    from stream_app.pipeline import Pipeline
    from stream_app.replay import ReplayOutcome, read_events

    catalog = load_catalog()
    out = ReplayOutcome()
    # As `valueloop replay` reads: no cyclic collections while the event list grows, then the
    # events leave the collector's generations.
    gc.disable()
    t0 = time.perf_counter()
    events = list(read_events([Path(path)], out))
    t_read = time.perf_counter() - t0
    gc.freeze()
    gc.enable()
    events.sort(key=lambda e: e.time)
    n = len(events)
    p = Pipeline(catalog)
    t0 = time.perf_counter()
    records = 0
    for lo in range(0, n, 65536):
        records += len(p.handle_many(events[lo : lo + 65536]).records)
    t_many = time.perf_counter() - t0
    res: dict[str, Any] = {
        "events": n,
        "decode_per_s": n / t_read,
        "handle_many_per_s": n / t_many,
        "records": records,
    }
    if one_by_one == "1":
        p = Pipeline(catalog)
        t0 = time.perf_counter()
        for ev in events:
            p.handle(ev)
        res["handle_per_s"] = n / (time.perf_counter() - t0)
    return res


def profile(path: str, limit: str = "14") -> dict[str, Any]:
    """Where the replay loop's time goes: decode, then Pipeline.handle_many (pyinstrument)."""
    from pyinstrument import Profiler

    from stream_app.core.catalog import load_catalog
    from stream_app.pipeline import Pipeline
    from stream_app.replay import ReplayOutcome, read_events

    prof = Profiler(interval=0.001)
    prof.start()
    gc.disable()  # as `valueloop replay` reads
    events = sorted(read_events([Path(path)], ReplayOutcome()), key=lambda e: e.time)
    gc.freeze()
    gc.enable()
    p = Pipeline(load_catalog())
    for lo in range(0, len(events), 65536):
        p.handle_many(events[lo : lo + 65536])
    prof.stop()
    session = prof.last_session
    assert session is not None
    root = session.root_frame()
    assert root is not None
    total = root.time
    # Self time per function, summed over the whole call tree: a frame's time minus its real
    # callees' (pyinstrument's synthetic "[self]" children hold part of that self time).
    own: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    stack = [root]
    while stack:
        f = stack.pop()
        real = [c for c in f.children if not c.is_synthetic]
        stack.extend(real)
        key = f"{f.function} ({Path(f.file_path_short or '?').name}:{f.line_no})"
        own[key] = own.get(key, 0.0) + f.time - sum(c.time for c in real)
        if f.function in PARTS:
            inclusive[f.function] = inclusive.get(f.function, 0.0) + f.time
    top = sorted(own.items(), key=lambda kv: -kv[1])[: int(limit)]
    return {
        "seconds": total,
        "events": len(events),
        "self_time": [[k, v / total] for k, v in top],
        "inclusive": [[what, inclusive.get(fn, 0.0) / total] for fn, what in PARTS.items()],
    }


# Parts of the replay loop reported with everything they call (function -> what it is).
PARTS = {
    "read_events": "reading + decoding the file (replay.read_events)",
    "sample_from_obj": "  of which: sample checks + KpiSample (events.telemetry.sample_from_obj)",
    "handle_many": "the pipeline (Pipeline.handle_many)",
    "check": "  of which: the input guard (Guard.check)",
    "add": "  of which: bucket updates (ServiceBuckets.add)",
    "_advance": "  of which: judging, compaction, eviction (ImpactEngine._advance)",
}


PROBES: dict[str, Callable[..., dict[str, Any]]] = {
    "floor-confluent": lambda b, t, n: floor_confluent(b, t, int(n)),
    "floor-aiokafka": lambda b, t, n: floor_aiokafka(b, t, int(n)),
    "decode": lambda n, s: decode_only(int(n), int(s)),
    "memory": lambda s, h, m: memory(int(s), float(h), m),
    "replay-inproc": replay_inproc,
    "profile": profile,
}


def main(argv: list[str]) -> None:
    print(json.dumps(PROBES[argv[0]](*argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
