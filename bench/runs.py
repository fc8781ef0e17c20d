"""Benchmarks that run the real worker process (`valueloop worker`) against the broker."""

from __future__ import annotations

import itertools
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.common import (
    START,
    CommittedWatch,
    Worker,
    create_topics,
    encoded,
    end_offsets,
    produce,
    releases_for,
    samples_per_minute,
    start_worker,
    telemetry,
    topic_env,
    topic_names,
    wait_ready,
)
from bench.profiles import Recording
from stream_app import codec
from stream_app.core.catalog import load_catalog
from stream_app.events.model import KpiSample, Release


def bad_values(service: str, t: float) -> list[bytes]:
    """One telemetry value of each of several bad-input classes (every one is dead-lettered)."""
    good = {"service": service, "kpi": "orders", "time": t, "value": 1.0}
    return [
        b"not json at all",
        b"\xff\xfe\x00 invalid utf-8",
        orjson.dumps(good)[:-9],  # truncated
        orjson.dumps({**good, "value": "lots"}),  # wrong type
        orjson.dumps({k: v for k, v in good.items() if k != "value"}),  # missing field
        orjson.dumps(good).replace(b"1.0", b"NaN"),  # not a number
        orjson.dumps({**good, "kpi": "no_such_kpi"}),  # not in the catalog
        orjson.dumps({**good, "time": 0.0}),  # far in the past
        orjson.dumps({**good, "labels": {f"l{i}": "x" for i in range(64)}}),  # too many labels
    ]


def load_topics(
    bootstrap: str, prefix: str, n: int, services: int, partitions: int, bad_every: int = 0
) -> dict[str, Any]:
    """Topics of a run, holding `n` telemetry events and one release per service.

    With `bad_every` = k, every k-th telemetry value is replaced by a bad one (`bad_values`,
    cycled), keyed by the service it replaces: those are dead-lettered, not counted.
    """
    create_topics(bootstrap, prefix, partitions)
    topics = topic_names(prefix)
    samples = list(telemetry(n, services))
    minutes = (samples[-1].time - START) / 60
    # Releases three hours in (or half way): their verdicts are part of the work.
    at = START + min(3 * 3600.0, max(60.0, minutes * 30))
    t0 = time.perf_counter()
    values = encoded(samples)
    encode_s = time.perf_counter() - t0
    if bad_every:
        for i in range(0, len(values), bad_every):
            key, _ = values[i]
            kinds = bad_values(samples[i].service, samples[i].time)
            values[i] = (key, kinds[(i // bad_every) % len(kinds)])
    produce(bootstrap, topics["deployments"], encoded(releases_for(services, at)))
    produce_s = produce(bootstrap, topics["telemetry"], values)
    return {
        "events": n,
        "services": services,
        "partitions": partitions,
        "event_time_minutes": round(minutes, 1),
        "mean_bytes": sum(len(v) for _, v in values) / len(values),
        "encode_s": encode_s,
        "produce_per_s": n / produce_s,
        "bad": len(range(0, n, bad_every)) if bad_every else 0,
    }


def _wait_committed(
    workers: list[Worker], watch: CommittedWatch, ends: dict[int, int], timeout: float
) -> tuple[float, list[tuple[float, int]]]:
    """Poll committed offsets until they reach `ends`; returns the time and the progress seen."""
    total = sum(ends.values())
    seen: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker died:\n{w.tail()}")
        done = watch.committed()
        now = time.perf_counter()
        seen.append((now, sum(done.values())))
        if all(done.get(p, 0) >= end for p, end in ends.items()):
            return now, seen
        time.sleep(0.1)
    raise RuntimeError(f"committed {seen[-1][1] if seen else 0} of {total} in {timeout:.0f} s")


def _steady_rate(seen: list[tuple[float, int]], total: int) -> float | None:
    """Events/s between 10 % and 90 % committed (start-up and the last commit left out).

    The moments the committed count crosses 10 % and 90 % are interpolated between the polls
    that bracket them, so a run that passes both marks between two polls (a fast machine)
    still has a figure: the rate over that interval. None only without two distinct polls
    bracketing the marks (`seen` should start with the count at the start of the timing).
    """
    if total <= 0 or len(seen) < 2:
        return None

    def crossing(mark: float) -> float | None:
        for (ta, ca), (tb, cb) in itertools.pairwise(seen):
            if ca < mark <= cb and tb > ta:
                return ta + (mark - ca) / (cb - ca) * (tb - ta)
        return None

    lo, hi = 0.1 * total, 0.9 * total
    if seen[0][1] >= lo:  # already past 10 % at the first poll: nothing to bracket it
        return None
    t_lo, t_hi = crossing(lo), crossing(hi)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return None
    return (hi - lo) / (t_hi - t_lo)


def pipeline_backlog(
    bootstrap: str,
    workdir: Path,
    n: int,
    services: int,
    partitions: int,
    timeout: float,
    profile: bool = False,
    bad_every: int = 0,
) -> dict[str, Any]:
    """One worker through `n` telemetry events already in the topic, until committed at the end.

    Timed from the moment the worker reports ready (/health: partitions assigned) to the first
    look at the group's committed offsets that finds them at the end offsets. `bad_every`: see
    `load_topics` (the bad-input run: does the worker keep its throughput?).
    """
    prefix = f"bench-pipe-{uuid.uuid4().hex[:8]}"
    loaded = load_topics(bootstrap, prefix, n, services, partitions, bad_every)
    tel = topic_names(prefix)["telemetry"]
    ends = end_offsets(bootstrap, tel)
    app_id = f"{prefix}-app"
    watch = CommittedWatch(bootstrap, app_id, tel, sorted(ends))
    w = start_worker(bootstrap, topic_env(prefix, app_id, partitions), workdir, wait=False)
    recording: Recording | None = None
    summary: dict[str, Any] | None = None
    try:
        wait_ready(w)
        t0 = time.perf_counter()
        cpu0 = _cpu_of(w)
        if profile:
            recording = Recording(w.proc.pid, workdir / f"{prefix}.pyspy.txt")
        t1, seen = _wait_committed([w], watch, ends, timeout)
        cpu1 = _cpu_of(w)
        if recording is not None:
            summary = recording.stop()
        verdicts = w.metric("valueloop_verdicts_total")
        accepted = w.metric("valueloop_samples_total", outcome="accepted")
        rejected = w.metric("valueloop_events_rejected_total")
        rss = _rss_of(w)
    finally:
        if recording is not None and summary is None:
            recording.stop()
        w.stop()
        watch.close()
    elapsed = t1 - t0
    return {
        "profile": summary,
        **loaded,
        "seconds": elapsed,
        "per_s": n / elapsed,
        "steady_per_s": _steady_rate([(t0, 0)] + [(t, c) for t, c in seen if t >= t0], n),
        "worker_cpu_s": cpu1 - cpu0,
        "worker_cpu_share": (cpu1 - cpu0) / elapsed,
        "samples_accepted": accepted,
        "dead_lettered": rejected,
        "verdict_records": verdicts,
        "worker_rss_bytes": rss,
    }


def _cpu_of(w: Worker) -> float:
    """CPU seconds (user + system) the worker process used so far."""
    import os

    with open(f"/proc/{w.proc.pid}/stat", encoding="utf-8") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_of(w: Worker) -> int | None:
    try:
        with open(f"/proc/{w.proc.pid}/statm", encoding="utf-8") as fh:
            import resource

            return int(fh.read().split()[1]) * resource.getpagesize()
    except OSError:
        return None


def _group_stable(bootstrap: str, group: str, members: int) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(10)
    return str(desc.state).endswith("STABLE") and len(desc.members) == members


def scale(
    bootstrap: str,
    workdir: Path,
    n: int,
    services: int,
    partitions: int,
    workers: int,
    timeout: float,
) -> dict[str, Any]:
    """`workers` workers in one group, settled on empty topics, then `n` events produced at once.

    Timed from the start of production to the group's committed offsets reaching the end.
    """
    prefix = f"bench-scale{workers}-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, prefix, partitions)
    topics = topic_names(prefix)
    app_id = f"{prefix}-app"
    env = topic_env(prefix, app_id, partitions)
    samples = list(telemetry(n, services))
    at = START + min(3 * 3600.0, (samples[-1].time - START) / 2)
    values = encoded(samples)
    ws = [start_worker(bootstrap, env, workdir, wait=False) for _ in range(workers)]
    try:
        for w in ws:
            wait_ready(w)
        deadline = time.monotonic() + 120
        while not _group_stable(bootstrap, app_id, workers):
            if time.monotonic() > deadline:
                raise RuntimeError("the worker group did not settle in 120 s")
            time.sleep(0.5)
        time.sleep(2.0)  # the last rebalance's assignment callbacks
        produce(bootstrap, topics["deployments"], encoded(releases_for(services, at)))
        t0 = time.perf_counter()
        produce_s = produce(bootstrap, topics["telemetry"], values)
        ends = end_offsets(bootstrap, topics["telemetry"])
        watch = CommittedWatch(bootstrap, app_id, topics["telemetry"], sorted(ends))
        try:
            t1, seen = _wait_committed(ws, watch, ends, timeout)
        finally:
            watch.close()
        per_worker = [w.metric("valueloop_samples_total") for w in ws]
    finally:
        for w in ws:
            w.stop()
    elapsed = t1 - t0
    return {
        "workers": workers,
        "events": n,
        "services": services,
        "partitions": partitions,
        "seconds": elapsed,
        "per_s": n / elapsed,
        "steady_per_s": _steady_rate([(t0, 0), *seen], n),
        "produce_seconds": produce_s,
        "samples_per_worker": per_worker,
    }


def verdict_latency(
    bootstrap: str, workdir: Path, releases: int, timeout: float = 120.0
) -> dict[str, Any]:
    """Seconds from the sample that moves a watermark past a look to the verdicts it finalizes.

    Per release (one service each): the samples before it and up to its settling look (the first
    past the overlap reach: there, with no history to take a reference from, every KPI's verdict
    is final) are in the topics and processed; then the one sample whose event time puts the
    watermark at that look is produced, and the clock runs until every final verdict of the
    release is on the impact topic.
    """
    catalog = load_catalog()
    kpis = len(catalog.kpis)
    lateness = max(catalog.allowed_lateness_seconds(f"lat-{i:03d}") for i in range(releases))
    post = max(k.overlap_seconds for k in catalog.kpis)
    base = max(k.baseline_seconds for k in catalog.kpis)
    prefix = f"bench-lat-{uuid.uuid4().hex[:8]}"
    partitions = 4
    create_topics(bootstrap, prefix, partitions)
    topics = topic_names(prefix)
    app_id = f"{prefix}-app"
    release_at = START + base + 600.0
    rels = [
        Release(f"r{i}-{uuid.uuid4().hex[:6]}", f"lat-{i:03d}", "2.0.0", release_at, "deployed")
        for i in range(releases)
    ]
    # Samples up to (not including) the minute that closes the post window, for every service.
    minutes = int((release_at + post + lateness - START) / 60) - 1
    history = list(telemetry(samples_per_minute(releases) * minutes, releases, prefix="lat-"))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{prefix}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "fetch.min.bytes": 1,
        }
    )
    parts = range(partitions)
    consumer.assign([TopicPartition(topics["impact"], p, 0) for p in parts])
    t_start = time.perf_counter()
    w = start_worker(bootstrap, topic_env(prefix, app_id, partitions), workdir)
    latencies: list[float] = []
    try:
        t_ready = time.perf_counter()
        produce(bootstrap, topics["deployments"], encoded(rels))
        produce(bootstrap, topics["telemetry"], encoded(history))
        want = len(history)
        deadline = time.monotonic() + timeout
        while w.metric("valueloop_samples_total") < want:
            if time.monotonic() > deadline or not w.alive():
                raise RuntimeError(f"history not consumed:\n{w.tail()}")
            time.sleep(0.2)
        t_history = time.perf_counter()
        time.sleep(1.0)
        for r in rels:
            closing = KpiSample(r.service, "orders", release_at + post + lateness, 1.0, 1.0)
            finals: set[str] = set()
            t0 = time.perf_counter()
            produce(
                bootstrap, topics["telemetry"], [(codec.key_of(closing), codec.encode(closing))]
            )
            deadline = time.monotonic() + timeout
            while len(finals) < kpis:
                if time.monotonic() > deadline or not w.alive():
                    raise RuntimeError(f"no final verdicts for {r.id}:\n{w.tail()}")
                m = consumer.poll(0.01)
                if m is None or m.error():
                    continue
                v = orjson.loads(m.value() or b"{}")
                if v.get("release_id") == r.id and v.get("phase") == "final":
                    finals.add(v["kpi"])
            latencies.append(time.perf_counter() - t0)
    finally:
        w.stop()
        consumer.close()
    latencies.sort()
    return {
        "releases": releases,
        "kpis_per_release": kpis,
        "history_samples": len(history),
        "worker_start_s": t_ready - t_start,
        "history_s": t_history - t_ready,
        "p50_s": statistics.median(latencies),
        "p99_s": _quantile(latencies, 0.99),
        "max_s": latencies[-1],
        "all_s": [round(x, 4) for x in latencies],
    }


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted `xs`."""
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
