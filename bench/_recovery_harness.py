"""Shared pieces of the reliability harnesses: simulated streams, worker processes, run comparison.

Used by bench/crash_recovery.py and the integration tests test_recovery, test_duplicates,
test_broker_restart and test_scaleout. Everything talks to a real broker; workers are
`python -m stream_app worker` processes in their own process group, stopped by pid.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import subprocess
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from bench import _workerproc as workerproc
from bench._workerproc import free_port
from stream_app import codec, simulate
from stream_app.broker import start_broker, stop_broker
from stream_app.core.catalog import load_catalog
from stream_app.events.ledger import encode_ledger
from stream_app.metrics import Metrics
from stream_app.pipeline import Pipeline
from stream_app.producer import Sender, ensure_topics
from stream_app.settings import INPUT_TOPIC_KEYS, Settings

# Events per simulated minute and service: 2 regions x (sessions, orders, revenue, cart value,
# requests, errors, 10 latency observations).
EVENTS_PER_SERVICE_MINUTE = 32
# Verdict fields that carry the judgement (times, reason text and ids are derived from these).
VERDICT_FIELDS = (
    "revision",
    "verdict",
    "reason_code",
    "baseline_value",
    "post_value",
    "change",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "rank_p_value",
    "hl_change",
    "hl_ci_low",
    "hl_ci_high",
    "confounders",
    "seasonal_reference",
)
VerdictKey = tuple[str, str, str]  # (release_id, kpi, phase)
LedgerKey = tuple[str | None, str | None, str]  # (release_id, item_id, service)
# The flow, DORA and ledger figures of /metrics (what `Pipeline.report_samples` sets).
REPORT_SERIES = Metrics().report_names
Totals = dict[str, dict[str, dict[str, float]]]  # service -> "stream/scope" -> figures
SERVICE_NAMES = ("checkout", "catalog", "payments", "search")
# Work items of the harness streams: short stages (95 minutes on average, the QA queue the
# bottleneck), so items shipped by a release an hour or two into the stream start inside it.
WORKFLOW_PLAN = simulate.WorkflowPlan(
    items_per_release=2.0,
    wip_items=4,
    stages=(
        simulate.Stage("backlog", "waiting", 15),
        simulate.Stage("dev", "active", 25),
        simulate.Stage("review", "active", 10),
        simulate.Stage("waiting-for-qa", "waiting", 30),
        simulate.Stage("qa", "active", 10),
        simulate.Stage("deploy", "active", 5),
    ),
    duration_sigma=0.3,
)
# faust reads these from the environment. Its defaults (60 s) keep a SIGKILLed member in the group
# for a minute, so every restart after a kill waits that long for its rebalance; harnesses use
# shorter ones (the broker's group.min.session.timeout.ms is 6 s).
FAST_FAILOVER_ENV = {
    "BROKER_SESSION_TIMEOUT": "8",
    "BROKER_HEARTBEAT_INTERVAL": "2",
    "BROKER_REBALANCE_TIMEOUT": "20",
}


# --------------------------------------------------------------------------- broker


@contextmanager
def own_broker(bootstrap: str | None, workdir: Path) -> Iterator[str]:
    """`bootstrap` when given; else a local KRaft broker of our own (data in
    `workdir/broker-data`, killed with this process) that is stopped on the way out."""
    if bootstrap is not None:
        yield bootstrap
        return
    broker_dir = workdir / "broker-data"
    info = start_broker(broker_dir, heap="768m", timeout=120, die_with_parent=True)
    try:
        yield info.bootstrap
    finally:
        stop_broker(broker_dir)


def add_run_args(ap: argparse.ArgumentParser) -> None:
    """--bootstrap and --workdir, as `run_main` reads them."""
    ap.add_argument("--bootstrap", help="use this broker (default: start one of our own)")
    ap.add_argument("--workdir", type=Path, help="default: a new temporary directory")


def run_main(
    args: argparse.Namespace,
    prefix: str,
    run: Callable[..., dict[str, Any]],
    *,
    summary: Callable[[dict[str, Any]], str],
    failed: Callable[[dict[str, Any]], object],
) -> int:
    """The rest of a harness command after parsing its arguments.

    Its work dir is `args.workdir`, else a new temporary one named `prefix...`; its broker
    `own_broker(args.bootstrap, workdir)`. Calls `run(bootstrap, workdir, **options)`, the options
    being every other argument but `out` (so argparse dests are named as `run`'s keyword
    parameters), writes the result as JSON to `args.out` (when the command has it and it is given;
    else <workdir>/result.json) and prints its summary line. Exit status 1 when `failed(result)`.
    """
    options = {k: v for k, v in vars(args).items() if k not in ("bootstrap", "workdir", "out")}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    with own_broker(args.bootstrap, workdir) as bootstrap:
        result = run(bootstrap, workdir, **options)
    path = getattr(args, "out", None) or workdir / "result.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(summary(result))
    print(f"result: {path}")
    return 1 if failed(result) else 0


# --------------------------------------------------------------------------- streams


def stream_scenario(
    seed: int,
    events: int,
    services: int = 6,
    samples_per_minute: int = 1,
    partitions: int = 4,
    *,
    flow: bool = False,
) -> simulate.Scenario:
    """A multi-service stream of at least about `events` events with releases throughout.

    Built on the accuracy scenario (a day of history, then releases every ~150 minutes per
    service with effects of -10..+10 %, overlapping pairs, regional releases and flags), sized by
    its number of releases. Small sizes get `compact_scenario` (the day of history alone would
    hold more events than asked for). `flow`: with work items and incidents too
    (`with_flow_and_incidents`).
    """
    names = service_names(services, partitions)
    per_minute = EVENTS_PER_SERVICE_MINUTE * len(names) * samples_per_minute
    if events < per_minute * (1440 + 90 + 120 + 300):
        return compact_scenario(seed, events, services, partitions, flow=flow)
    n = len(names)
    while True:
        sc = simulate.accuracy_scenario(
            seed, n, services=names, overlap_fraction=0.05, samples_per_minute=samples_per_minute
        )
        if sc.duration_seconds / 60 * per_minute >= events:
            return with_flow_and_incidents(sc) if flow else sc
        n += len(names)


def service_names(n: int, partitions: int = 4) -> tuple[str, ...]:
    """`n` service names: the simulator's tuned shop services first, then generic ones (svcNN)
    picked so that every input partition gets services (keys are partitioned by librdkafka's
    default consistent_random: CRC32 of the key modulo the partition count)."""
    names = list(SERVICE_NAMES[:n])
    load = Counter(zlib.crc32(x.encode()) % partitions for x in names)
    i = len(SERVICE_NAMES)
    while len(names) < n:
        name = f"svc{i:02d}"
        p = zlib.crc32(name.encode()) % partitions
        if load[p] <= min(load[q] for q in range(partitions)) or i > 999:
            names.append(name)
            load[p] += 1
        i += 1
    return tuple(names)


# Effects cycled through by compact_scenario's releases: bad, neutral, good, slower, flag, regional.
_COMPACT_PLAN: tuple[tuple[dict[str, float], dict[str, str], str], ...] = (
    ({"conversion": -0.10}, {}, "bad"),
    ({}, {}, "neutral"),
    ({"cart_value": 0.08}, {}, "good"),
    ({"latency_ms": 0.15}, {}, "bad"),
    ({"conversion": 0.06}, {}, "flag"),
    ({"cart_value": 0.06}, {"region": "eu"}, "canary"),
)


def compact_scenario(
    seed: int, events: int, services: int = 3, partitions: int = 4, *, flow: bool = False
) -> simulate.Scenario:
    """About `events` events: 2 h of history, then one release per service every 100 minutes
    (effects cycled from bad/neutral/good/slower/flag/regional, one overlapping pair), no
    day-ago reference. For CI-sized runs. `flow`: with work items and incidents too."""
    names = service_names(services, partitions)
    start = simulate.ACCURACY_START
    minutes = max(240, math.ceil(events / (EVENTS_PER_SERVICE_MINUTE * len(names))))
    end_min = minutes - 75  # the last post window (60 m) and lateness (5 m) close in the stream
    plans: list[simulate.PlannedRelease] = []
    i = 0
    for s_i, name in enumerate(names):
        t = 120 + 17 * s_i
        while t <= end_min:
            effects, scope, label = _COMPACT_PLAN[(i + seed) % len(_COMPACT_PLAN)]
            flag = label == "flag"
            plans.append(
                simulate.PlannedRelease(
                    name,
                    start + 60.0 * t,
                    f"f{i}=on@50%" if flag else f"1.{i}.0",
                    "flag" if flag else "deployed",
                    dict(effects),
                    dict(scope),
                    flag_key=f"f{i}" if flag else None,
                    rollout_percent=50.0 if flag else None,
                    label=label,
                )
            )
            if i == 1 and t + 20 <= end_min:  # one overlapping pair: confounded both ways
                plans.append(
                    simulate.PlannedRelease(
                        name, start + 60.0 * (t + 20), f"1.{i}.1", label="overlap"
                    )
                )
            i += 1
            t += 100
    plans.sort(key=lambda p: (p.time, p.service))
    sc = simulate.Scenario(
        seed=seed,
        start=start,
        duration_seconds=60.0 * minutes,
        services=tuple(simulate.service_profile(n) for n in names),
        releases=tuple(plans),
    )
    return with_flow_and_incidents(sc) if flow else sc


def with_flow_and_incidents(sc: simulate.Scenario) -> simulate.Scenario:
    """The scenario with work items (`WORKFLOW_PLAN`) and incidents: one caused by each of the
    first two deployments planned as bad (linked by deployment id; the second never resolved),
    and one of the first release's service an hour after it, linked by time."""
    bad = [
        i
        for i, p in enumerate(sc.releases)
        if p.kind in ("deployed", "upgraded") and any(v < 0 for v in p.effects.values())
    ][:2]
    incidents = [
        simulate.PlannedIncident(
            sc.releases[i].service,
            sc.releases[i].time + 1200.0,
            sc.releases[i].time + 3000.0 if k == 0 else None,
            release=i,
        )
        for k, i in enumerate(bad)
    ]
    if sc.releases:
        first = sc.releases[0]
        incidents.append(
            simulate.PlannedIncident(first.service, first.time + 3600.0, first.time + 4200.0)
        )
    return dataclasses.replace(sc, workflow=WORKFLOW_PLAN, incidents=tuple(incidents))


def with_sample_ids(events: Iterable[codec.Decoded], prefix: str = "s") -> Iterator[codec.Decoded]:
    """The events with a unique id on every sample (as producers that retry would send)."""
    for i, ev in enumerate(events):
        if isinstance(ev, codec.KpiSample) and ev.id is None:
            yield dataclasses.replace(ev, id=f"{prefix}{i}")
        else:
            yield ev


def topic_settings(
    bootstrap: str, prefix: str, app_id: str, *, partitions: int = 4, outputs: str | None = None
) -> tuple[Settings, dict[str, str]]:
    """Settings and the VALUELOOP_* environment of a run: inputs `<prefix>.<role>`, outputs
    `<outputs or prefix>.<role>`, its own app id (consumer group and changelog)."""
    out = outputs or prefix
    env = {
        **{f"VALUELOOP_TOPIC_{r.upper()}": f"{prefix}.{r}" for r in INPUT_TOPIC_KEYS},
        **{
            f"VALUELOOP_TOPIC_{r.upper()}": f"{out}.{r}" for r in ("impact", "deadletter", "ledger")
        },
        "VALUELOOP_APP_ID": app_id,
        "VALUELOOP_TOPIC_PARTITIONS": str(partitions),
        "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
    }
    fields = {k[len("VALUELOOP_") :].lower(): v for k, v in env.items()}
    return Settings(**fields), env  # type: ignore[arg-type]  # pydantic coerces the strings


@dataclass
class Produced:
    """What was produced to the input topics."""

    by_role: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.by_role.values())


def produce(
    settings: Settings,
    events: Iterable[codec.Decoded],
    *,
    into: Produced | None = None,
    also: Pipeline | None = None,
    times: int = 1,
) -> Produced:
    """Produce events to the input topics (keyed by service), each `times` times in a row.

    Args:
        settings: names the topics and the broker.
        events: what to send, in order.
        into: add counts to this record.
        also: feed every event (once) to this in-process pipeline too: the offline reference.
        times: deliver each message this many times (a producer retrying after a lost ack).
    """
    ensure_topics(settings)
    topics = settings.topic_names()
    out = into or Produced()
    sender = Sender(settings)
    t0 = time.monotonic()
    for ev in events:
        role = codec.role_of(ev)
        value, key = codec.encode(ev), codec.key_of(ev)
        for _ in range(times):
            sender.send(topics[role], value, key)
        out.by_role[role] += times
        if also is not None:
            also.handle(ev)
    sender.flush(120)
    del sender  # its librdkafka threads go with it (they would keep reconnecting to the broker)
    out.seconds += time.monotonic() - t0
    return out


# --------------------------------------------------------------------------- worker processes


@dataclass
class Worker:
    """A `valueloop worker` process (own process group) with its HTTP port and data dir.

    Restartable (same data dir and app id); the process handling is bench/_workerproc.py's.
    """

    env: dict[str, str]
    data_dir: Path
    name: str = "w"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log: Path | None = None
    started_at: float = 0.0

    def start(self) -> Worker:
        """Spawn the process (same data dir and app id as before); does not wait."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = free_port()
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.data_dir.parent / f"{self.name}-{self.starts}.log"
        self.proc = workerproc.spawn(
            {**FAST_FAILOVER_ENV, **self.env},
            self.log,
            port=self.port,
            data_dir=self.data_dir,
            die_with_parent=True,  # a harness killed by a timeout leaves no worker
        )
        self.started_at = time.monotonic()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log and self.log.exists() else ""

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """HTTP GET on the worker's page; (status, body)."""
        return workerproc.http_get(self.port, path, timeout)

    def try_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes] | None:
        return workerproc.try_get(self.port, path, timeout)

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait until /health answers 200; returns seconds since the process started."""
        assert self.proc is not None, f"{self.name} not started"
        workerproc.wait_healthy(
            self.proc, self.port, timeout=timeout, tail=self.tail, name=self.name
        )
        return time.monotonic() - self.started_at

    def _exposition(self) -> str:
        got = self.try_get("/metrics")
        return got[1].decode() if got is not None and got[0] == 200 else ""

    def samples(self) -> dict[str, float]:
        """Prometheus samples of /metrics as {'name{k="v",...}': value} (empty when unreachable)."""
        out: dict[str, float] = {}
        for name, labels, value in workerproc.parse_samples(self._exposition()):
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            out[f"{name}{{{text}}}" if text else name] = value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0.0 when none or when the
        worker does not answer)."""
        return workerproc.metric_value(self._exposition(), name, **labels)

    def figures(self) -> dict[str, float]:
        """The flow, DORA and ledger figures of /metrics (`REPORT_SERIES`), as `samples` keys."""
        return report_figures(workerproc.parse_samples(self._exposition()))

    def totals(self) -> Totals:
        status, body = self.get("/state/totals", timeout=60)
        assert status == 200, (status, body[:300])
        data: Totals = orjson.loads(body)
        return data

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group (by its pid) and reap it."""
        if self.proc is not None:
            workerproc.stop_group(self.proc, sig, 30.0)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


# --------------------------------------------------------------------------- progress and reads


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def input_partitions(bootstrap: str, topics: Iterable[str]) -> list[TopicPartition]:
    c = _consumer(bootstrap, "valueloop-harness-meta")
    try:
        md = c.list_topics(timeout=30)
        return [
            TopicPartition(t, p)
            for t in topics
            if t in md.topics
            for p in sorted(md.topics[t].partitions)
        ]
    finally:
        c.close()


def group_progress(
    bootstrap: str, group: str, parts: list[TopicPartition]
) -> tuple[int, int, list[str]]:
    """(committed messages, end offsets, partitions not at their end) of a consumer group.

    Reads the group's committed offsets without joining it.
    """
    c = _consumer(bootstrap, group)
    try:
        committed = c.committed(parts, timeout=30)
        done = total = 0
        behind: list[str] = []
        for tp in committed:
            _, high = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=30)
            at = max(tp.offset, 0)
            done += min(at, high)
            total += high
            if at < high:
                behind.append(f"{tp.topic}[{tp.partition}] {at}/{high}")
        return done, total, behind
    finally:
        c.close()


def wait_done(
    bootstrap: str,
    group: str,
    parts: list[TopicPartition],
    workers: Iterable[Worker],
    timeout: float = 900.0,
    log: Any = None,
) -> float:
    """Wait until the group committed every input partition to its end and a live worker flushed
    its state after that; returns the wall time at which the commits reached the end.

    'Flushed after' is valueloop_state_flushed_timestamp_seconds > that time on every live worker.
    """
    deadline = time.monotonic() + timeout
    ws = list(workers)
    behind: list[str] = []
    next_log = 0.0
    while time.monotonic() < deadline:
        for w in ws:
            assert w.alive(), f"{w.name} died:\n{w.tail()}"
        done, total, behind = group_progress(bootstrap, group, parts)
        if log is not None and time.monotonic() >= next_log:
            log(f"{group}: committed {done}/{total}; behind: {behind[:4]}")
            next_log = time.monotonic() + 10
        if not behind and total > 0:
            at = time.time()
            for w in ws:
                while w.metric("valueloop_state_flushed_timestamp_seconds") <= at:
                    assert time.monotonic() < deadline, f"{w.name} never flushed after the end"
                    assert w.alive(), f"{w.name} died:\n{w.tail()}"
                    time.sleep(0.3)
            return at
        time.sleep(1.0)
    state = {
        w.name: {
            "alive": w.alive(),
            "accepted": w.metric("valueloop_samples_total", outcome="accepted"),
            "replayed_skipped": w.metric("valueloop_events_replayed_total"),
            "lag": w.metric("valueloop_consumer_lag_messages"),
            "services": sorted(w.totals()) if w.alive() else None,
            "log": str(w.log),
        }
        for w in ws
    }
    raise AssertionError(f"group {group} not at the end in {timeout:.0f} s: {behind[:8]} {state}")


def wait_settled(
    bootstrap: str,
    group: str,
    workers: Iterable[Worker],
    services: Iterable[str],
    timeout: float = 120.0,
) -> tuple[Totals, list[str]]:
    """Wait until the group is stable with exactly `workers` as members and their /state/totals
    together cover `services`; returns `merge_totals` of them then (or at the timeout).

    A worker killed at the end leaves the group only when its session times out: until the
    survivors are assigned its partitions and have restored them, nobody reports its services.
    """
    from confluent_kafka.admin import AdminClient

    ws = list(workers)
    want = set(services)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        desc = admin.describe_consumer_groups([group])[group].result(10)
        stable = str(desc.state).endswith("STABLE") and len(desc.members) == len(ws)
        if stable:
            totals, both = merge_totals(w.totals() for w in ws)
            if want <= set(totals) or time.monotonic() >= deadline:
                return totals, both
        elif time.monotonic() >= deadline:
            return merge_totals(w.totals() for w in ws)
        time.sleep(0.5)


def scan_topic(topic: str, bootstrap: str, timeout: float = 120.0) -> Iterator[Any]:
    """Every message of a topic up to its end offsets when the scan starts (confluent-kafka
    messages, each partition in offset order; none when the topic does not exist)."""
    c = _consumer(bootstrap, f"valueloop-harness-{time.monotonic_ns()}")
    try:
        md = c.list_topics(topic, timeout=30)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        pos = dict.fromkeys(parts, 0)
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in parts):
            assert time.monotonic() < deadline, f"read {pos} of {ends} in {topic}"
            for m in c.consume(1000, 0.5):
                if m.error():
                    continue
                p = m.partition()
                if m.offset() < ends[p]:
                    yield m
                pos[p] = max(pos[p], m.offset() + 1)
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every record of a topic up to its current end offsets, decoded as JSON, partition order."""
    got: dict[int, list[dict[str, Any]]] = {}
    for m in scan_topic(topic, bootstrap, timeout):
        got.setdefault(m.partition(), []).append(orjson.loads(m.value()))
    return [r for p in sorted(got) for r in got[p]]


# --------------------------------------------------------------------------- comparison


def latest_verdicts(records: Iterable[Mapping[str, Any]]) -> dict[VerdictKey, dict[str, Any]]:
    """The latest record per (release_id, kpi, phase): highest revision, then last in order."""
    out: dict[VerdictKey, dict[str, Any]] = {}
    for r in records:
        key = (r["release_id"], r["kpi"], r["phase"])
        prev = out.get(key)
        if prev is None or r["revision"] >= prev["revision"]:
            out[key] = dict(r)
    return out


def duplicate_emissions(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many verdict records repeat an earlier (release, kpi, phase, revision): 'same' when
    the content is equal, 'conflicting' when it is not (a changed judgement under one revision)."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    same = conflicting = 0
    for r in records:
        key = (r["release_id"], r["kpi"], r["phase"], r["revision"])
        prev = seen.get(key)
        if prev is None:
            seen[key] = dict(r)
        elif all(prev.get(f) == r.get(f) for f in VERDICT_FIELDS):
            same += 1
        else:
            conflicting += 1
    return {"same": same, "conflicting": conflicting}


def verdict_differences(
    want: Mapping[VerdictKey, Mapping[str, Any]],
    have: Mapping[VerdictKey, Mapping[str, Any]],
    phases: tuple[str, ...] = ("final", "interim"),
) -> list[dict[str, Any]]:
    """Every difference between two sets of latest verdicts (missing, extra, differing fields)."""
    diffs: list[dict[str, Any]] = []
    keys = sorted(k for k in set(want) | set(have) if k[2] in phases)
    for k in keys:
        a, b = want.get(k), have.get(k)
        if a is None or b is None:
            diffs.append(
                {
                    "key": list(k),
                    "kind": "missing" if b is None else "extra",
                    "service": (a or b or {}).get("service"),
                }
            )
            continue
        fields = {f: [a.get(f), b.get(f)] for f in VERDICT_FIELDS if a.get(f) != b.get(f)}
        if fields:
            diffs.append(
                {"key": list(k), "kind": "differs", "service": a.get("service"), "fields": fields}
            )
    return diffs


def totals_differences(want: Totals, have: Totals) -> list[dict[str, Any]]:
    """Every (service, stream/scope) whose bucket count, sample count or value sum differs."""
    diffs: list[dict[str, Any]] = []
    for service in sorted(set(want) | set(have)):
        a, b = want.get(service), have.get(service)
        if a is None or b is None:
            diffs.append({"service": service, "kind": "missing" if b is None else "extra"})
            continue
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if x != y:
                diffs.append({"service": service, "series": key, "want": x, "have": y})
    return diffs


def merge_totals(parts: Iterable[Totals]) -> tuple[Totals, list[str]]:
    """Union of several workers' totals; services reported by more than one worker are listed."""
    out: Totals = {}
    both: list[str] = []
    for t in parts:
        for service, v in t.items():
            if service in out and out[service] != v:
                both.append(service)
            out.setdefault(service, v)
    return out, sorted(set(both))


def report_figures(samples: Iterable[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    """The `REPORT_SERIES` samples among `samples`, as {'name{k="v",...}': value}."""
    out: dict[str, float] = {}
    for name, labels, value in samples:
        if name in REPORT_SERIES:
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            out[f"{name}{{{text}}}"] = value
    return out


def figure_differences(want: Mapping[str, float], have: Mapping[str, float]) -> list[Any]:
    """Every flow/DORA/ledger series missing, extra or with another value: [series, want, have]."""
    return [
        [k, want.get(k), have.get(k)]
        for k in sorted(set(want) | set(have))
        if want.get(k) != have.get(k)
    ]


def latest_ledger(records: Iterable[Mapping[str, Any]]) -> dict[LedgerKey, dict[str, Any]]:
    """The latest value-ledger record per (release, item, service), in the order given."""
    return {(r["release_id"], r["item_id"], r["service"]): dict(r) for r in records}


def ledger_differences(
    want: Mapping[LedgerKey, Mapping[str, Any]], have: Mapping[LedgerKey, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Every ledger entry missing, extra or different between two sets of latest records."""
    diffs: list[dict[str, Any]] = []
    for k in sorted(set(want) | set(have), key=str):
        a, b = want.get(k), have.get(k)
        if a != b:
            kind = "missing" if b is None else "extra" if a is None else "differs"
            diffs.append({"key": list(k), "kind": kind, "want": a, "have": b})
    return diffs


class RecordingPipeline(Pipeline):
    """A Pipeline that keeps the JSON of every verdict and ledger entry it produced (the offline
    reference)."""

    def __init__(self) -> None:
        super().__init__(load_catalog())
        self.records: list[dict[str, Any]] = []
        self.ledger_records: list[dict[str, Any]] = []

    def handle(self, event: codec.Decoded) -> Any:
        step = super().handle(event)
        for rec in step.records:
            self.records.append(orjson.loads(codec.encode_verdict(rec)))
        for entry in step.ledger:
            self.ledger_records.append(orjson.loads(encode_ledger(entry)))
        return step

    def figures(self) -> dict[str, float]:
        """The flow, DORA and ledger figures as a worker that read the same events exports them."""
        return report_figures(self.report_samples())

    def result(self) -> tuple[dict[VerdictKey, dict[str, Any]], Totals]:
        return latest_verdicts(self.records), self.engine.bucket_totals()


# --------------------------------------------------------------------------- diagnosis


def committed_offsets(bootstrap: str, group: str, parts: list[TopicPartition]) -> dict[str, int]:
    """The group's committed offset per "topic[partition]" (-1: none)."""
    c = _consumer(bootstrap, group)
    try:
        return {f"{tp.topic}[{tp.partition}]": tp.offset for tp in c.committed(parts, timeout=30)}
    finally:
        c.close()


def bucket_diffs(want: Worker, have: Worker, service: str, series: str) -> list[list[float]]:
    """Buckets of one series that differ between two live workers: [index, count want, count
    have, sum want - sum have]."""
    stream, _, scope = series.partition("/")
    q = f"/state/buckets?service={service}&stream={stream}&scope={scope}"
    rows = [
        {int(r[0]): (r[1], r[2]) for r in orjson.loads(w.get(q, timeout=60)[1])}
        for w in (want, have)
    ]
    out = []
    for idx in sorted(set(rows[0]) | set(rows[1])):
        a, b = rows[0].get(idx, (0.0, 0.0)), rows[1].get(idx, (0.0, 0.0))
        if a != b:
            out.append([idx, a[0], b[0], round(a[1] - b[1], 6)])
    return out


def find_samples(
    bootstrap: str, topic: str, service: str, stream: str, scope: str, bucket: int, width: float
) -> list[dict[str, Any]]:
    """Telemetry messages of one bucket of one series: partition, offset, value (a full scan)."""
    label, _, value = scope.partition("=")
    found: list[dict[str, Any]] = []
    for m in scan_topic(topic, bootstrap, timeout=600):
        if m.key() != service.encode():
            continue
        s = orjson.loads(m.value())
        if s.get("kpi") != stream or math.floor(s["time"] / width) != bucket:
            continue
        if label and s.get("labels", {}).get(label) != value:
            continue
        found.append({"partition": m.partition(), "offset": m.offset(), "value": s["value"]})
    return found


def changelog_offsets(bootstrap: str, app_id: str, service: str) -> list[dict[str, Any]]:
    """Every snapshot of `service` in the worker's changelog: its changelog offset and the input
    offsets it says it covers (stream_app.agents.state envelope)."""
    from stream_app.agents import state as state_mod

    topic = f"{app_id}-{state_mod.TABLE_NAME}-changelog"
    out: list[dict[str, Any]] = []
    for m in scan_topic(topic, bootstrap, timeout=600):
        if m.key() != service.encode() or not m.value():
            continue
        covered = state_mod.unwrap(m.value())[1]
        out.append(
            {
                "changelog_offset": m.offset(),
                "timestamp_ms": m.timestamp()[1],
                "covers": {f"{t}[{p}]": o for (t, p), o in sorted(covered.items())},
            }
        )
    return out


def owner(workers: Iterable[Worker], service: str) -> Worker | None:
    """The live worker whose /state/totals reports `service`."""
    for w in workers:
        if w.alive() and service in w.totals():
            return w
    return None


def diagnose(
    bootstrap: str,
    telemetry_topic: str,
    want: Iterable[Worker],
    have: Iterable[Worker],
    have_app_id: str,
    diffs: list[dict[str, Any]],
    limit: int = 2,
) -> list[dict[str, Any]]:
    """For differing bucket totals (live workers): which buckets differ, the input messages of
    those buckets (partition, offset, value), and the snapshots of the service in the changelog
    of the run that differs (with the input offsets each says it covers)."""
    want, have = list(want), list(have)
    out = []
    for d in diffs[:limit]:
        if "series" not in d:
            out.append(d)
            continue
        a, b = owner(want, d["service"]), owner(have, d["service"])
        if a is None or b is None:
            out.append({**d, "owners": [a and a.name, b and b.name]})
            continue
        stream, _, scope = d["series"].partition("/")
        buckets = bucket_diffs(a, b, d["service"], d["series"])
        messages = [
            find_samples(bootstrap, telemetry_topic, d["service"], stream, scope, int(i), 60.0)
            for i, *_ in buckets[:2]
        ]
        out.append(
            {
                **d,
                "owners": [a.name, b.name],
                "buckets": buckets[:10],
                "messages": messages,
                "changelog": changelog_offsets(bootstrap, have_app_id, d["service"]),
            }
        )
    return out


def deadletter_reasons(bootstrap: str, topic: str, timeout: float = 60.0) -> dict[str, int]:
    """Dead-lettered messages of a run by reason (header valueloop.reason)."""
    c = _consumer(bootstrap, f"valueloop-harness-{time.monotonic_ns()}")
    out: Counter[str] = Counter()
    try:
        md = c.list_topics(topic, timeout=30)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        pos = dict.fromkeys(parts, 0)
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in parts) and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error():
                    continue
                pos[m.partition()] = m.offset() + 1
                reason = dict(m.headers() or []).get("valueloop.reason") or b"?"
                out[reason.decode()] += 1
        return dict(out)
    finally:
        c.close()
