"""Start and stop a real valueloop worker process for integration tests (stopped by pid).

The process handling is bench/_workerproc.py's (shared with the benchmarks and harnesses).
"""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Consumer

from bench._workerproc import WorkerProc, free_port, launch

__all__ = ["WorkerProc", "consume_all", "free_port", "start_worker", "topic_env"]


def topic_env(prefix: str) -> dict[str, str]:
    """VALUELOOP_TOPIC_* variables that give a test its own topics."""
    roles = (
        "deployments",
        "telemetry",
        "workflow",
        "incidents",
        "impact",
        "deadletter",
        "ledger",
        "otlp",
        "product_releases",
    )
    return {f"VALUELOOP_TOPIC_{r.upper()}": f"{prefix}.{r}" for r in roles}


def start_worker(bootstrap: str, env: dict[str, str], workdir: Path) -> WorkerProc:
    """Start `valueloop worker` and wait until /health answers ready (90 s)."""
    w = launch(bootstrap, env, workdir, data="data", kind=WorkerProc)
    w.wait_ready(90)
    return w


def consume_all(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list[object]:
    """Read at least n messages of a topic from the beginning (confluent-kafka, real broker)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[object] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            out.append(m)
    finally:
        c.close()
    return out
