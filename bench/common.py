"""What every benchmark shares: the machine, the broker, the events, topics and offsets."""

from __future__ import annotations

import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench._workerproc import BOOTSTRAP_ENV, WorkerProc, launch
from bench._workerproc import free_port as free_port  # re-exported
from stream_app import codec
from stream_app.events.model import KpiSample, Release

REPO = Path(__file__).resolve().parent.parent
START = 1717480800.0  # Tuesday 2024-06-04 06:00 UTC: event time of the first sample
# The sample streams of the bundled catalog (stream_app/data/kpis.toml), one sample each per
# service, region and minute, as a shop's telemetry exporter sends them.
STREAMS = ("sessions", "orders", "revenue", "cart_value", "latency_ms", "requests", "errors")
REGIONS = ("eu", "us")
ROLES = ("deployments", "telemetry", "workflow", "incidents", "impact", "deadletter", "ledger")


# ---------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """The machine and software the figures were measured on."""
    import aiokafka
    import confluent_kafka
    import faust
    import orjson

    from stream_app.broker import KAFKA_VERSION

    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git_commit": git_commit(),
        "cores": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "kafka_broker": KAFKA_VERSION,
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "aiokafka": aiokafka.__version__,
        "faust": faust.__version__,
        "orjson": orjson.__version__,
        "load_average_at_start": [round(x, 2) for x in load],
    }


def git_commit() -> str:
    """The checked-out commit, read from .git without running git (the tree may hold more)."""
    git = REPO / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        path = git / ref
        if path.exists():
            return path.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return "unknown"


# ---------------------------------------------------------------------------- broker
@dataclass
class Broker:
    """The broker the run uses: the environment's, or a local one this run started."""

    bootstrap: str
    data_dir: Path | None  # set when this run started it (and must stop it)

    def stop(self) -> None:
        if self.data_dir is not None:
            from stream_app.broker import stop_broker

            stop_broker(self.data_dir)  # by the pid it recorded


def open_broker(workdir: Path) -> Broker:
    """``$VALUELOOP_KAFKA_BOOTSTRAP_SERVERS``, else a local KRaft broker on 127.0.0.1."""
    if os.environ.get(BOOTSTRAP_ENV):
        return Broker(os.environ[BOOTSTRAP_ENV], None)
    from stream_app.broker import start_broker

    data_dir = workdir / "kafka"
    info = start_broker(data_dir, heap="768m", timeout=120, die_with_parent=True)
    return Broker(info.bootstrap, data_dir)


# ---------------------------------------------------------------------------- events
def telemetry(
    n: int, services: int, seed: int = 1, start: float = START, prefix: str = "svc-"
) -> Iterator[KpiSample]:
    """`n` KPI samples: every service, stream and region once a minute, in event-time order."""
    rng = random.Random(seed)
    names = [f"{prefix}{i:03d}" for i in range(services)]
    made = 0
    minute = 0
    while True:
        t0 = start + 60.0 * minute
        for s, name in enumerate(names):
            for r, region in enumerate(REGIONS):
                labels = {"region": region}
                sessions = 400.0 + 40 * s % 300 + rng.random() * 20
                orders = float(round(sessions * (0.05 + rng.random() * 0.005)))
                requests = sessions * 6
                values = {
                    "sessions": (sessions, sessions),
                    "orders": (orders, orders),
                    "revenue": (round(orders * 60 * (0.9 + 0.2 * rng.random()), 2), float(orders)),
                    "cart_value": (
                        round(orders * 60 * (0.9 + 0.2 * rng.random()), 2),
                        float(orders),
                    ),
                    "latency_ms": (round(120.0 + 40 * rng.random(), 1), 1.0),
                    "requests": (requests, requests),
                    "errors": (float(round(requests * 0.004)), float(round(requests * 0.004))),
                }
                for stream in STREAMS:
                    value, count = values[stream]
                    t = t0 + 1.0 + r + 0.01 * (s % 50)
                    yield KpiSample(name, stream, t, value, count, labels)
                    made += 1
                    if made >= n:
                        return
        minute += 1


def samples_per_minute(services: int) -> int:
    return services * len(REGIONS) * len(STREAMS)


def releases_for(services: int, at: float) -> list[Release]:
    """One release per service at `at` (its verdicts come once the post window has closed)."""
    return [
        Release(f"bench-{i:03d}-{int(at)}", f"svc-{i:03d}", "1.0.1", at + 7.0 * i, "deployed")
        for i in range(services)
    ]


# ---------------------------------------------------------------------------- topics
def topic_names(prefix: str) -> dict[str, str]:
    return {r: f"{prefix}.{r}" for r in ROLES}


def topic_env(prefix: str, app_id: str, partitions: int) -> dict[str, str]:
    """VALUELOOP_* variables giving a worker its own topics and consumer group."""
    env = {f"VALUELOOP_TOPIC_{r.upper()}": name for r, name in topic_names(prefix).items()}
    env["VALUELOOP_APP_ID"] = app_id
    env["VALUELOOP_TOPIC_PARTITIONS"] = str(partitions)
    return env


def create_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1) for name in topic_names(prefix).values()]
    )
    for f in futures.values():
        f.result(60)


def produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> float:
    """Send (key, value) pairs as fast as the client takes them; returns seconds until acked."""
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_000_000,
            "compression.type": "none",
            "acks": "all",
        }
    )
    t0 = time.perf_counter()
    for key, value in values:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.05)
    left = p.flush(120)
    if left:
        raise RuntimeError(f"{left} messages not delivered to {topic}")
    return time.perf_counter() - t0


def encoded(events: list[KpiSample] | list[Release]) -> list[tuple[bytes, bytes]]:
    return [(codec.key_of(e), codec.encode(e)) for e in events]


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets"})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        }
    finally:
        c.close()


class CommittedWatch:
    """Reads a consumer group's committed offsets of a topic (without joining the group)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: list[int]) -> None:
        self.topic = topic
        self.tps = [TopicPartition(topic, p) for p in partitions]
        self.c = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )

    def committed(self) -> dict[int, int]:
        return {tp.partition: max(tp.offset, 0) for tp in self.c.committed(self.tps, timeout=10)}

    def close(self) -> None:
        self.c.close()


# ---------------------------------------------------------------------------- worker
class Worker(WorkerProc):
    """A `valueloop worker` subprocess (stopped by its pid; bench/_workerproc.py)."""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        """SIGTERM to its process group, SIGKILL after `timeout` (bench state is thrown away)."""
        super().stop(sig, timeout)


def start_worker(bootstrap: str, env: dict[str, str], workdir: Path, wait: bool = True) -> Worker:
    """Start `valueloop worker` (its own session, so it is stopped with its children)."""
    w = launch(bootstrap, env, workdir, data="data-{port}", kind=Worker)
    if wait:
        wait_ready(w)
    return w


def wait_ready(w: Worker, timeout: float = 120.0) -> None:
    """Wait until its /health answers 200; stops it and raises RuntimeError when not."""
    w.wait_ready(timeout, error=RuntimeError, interval=0.1, stop_sig=signal.SIGTERM)


# ---------------------------------------------------------------------------- probes
def probe(name: str, *args: object, timeout: float = 900.0) -> dict[str, Any]:
    """Run `python -m bench.probes NAME ARGS...` (a fresh interpreter) and return its JSON."""
    cmd = [sys.executable, "-m", "bench.probes", name, *map(str, args)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"probe {name} failed:\n{res.stderr.decode(errors='replace')[-3000:]}")
    out: dict[str, Any] = json.loads(res.stdout.decode().strip().splitlines()[-1])
    return out
