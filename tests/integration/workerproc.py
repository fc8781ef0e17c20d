"""Start and stop a real valueloop worker process for integration tests (stopped by pid)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def topic_env(prefix: str) -> dict[str, str]:
    """VALUELOOP_TOPIC_* variables that give a test its own topics."""
    roles = ("deployments", "telemetry", "workflow", "incidents", "impact", "deadletter", "ledger")
    return {f"VALUELOOP_TOPIC_{r.upper()}": f"{prefix}.{r}" for r in roles}


@dataclass
class WorkerProc:
    """A worker subprocess and how to reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0.0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        for fam in text_string_to_metric_families(self.metrics()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    def wait_for(self, name: str, value: float, timeout: float = 60.0, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        got = 0.0
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker died:\n{self.log.read_text()[-3000:]}"
            try:
                got = self.metric(name, **labels)
            except (urllib.error.URLError, ConnectionError, OSError):
                got = 0.0
            if got >= value:
                return got
            time.sleep(0.3)
        raise AssertionError(f"{name}{labels} = {got} < {value}\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_worker(bootstrap: str, env: dict[str, str], workdir: Path) -> WorkerProc:
    """Start `valueloop worker` and wait until /health answers ready."""
    port = free_port()
    log = workdir / f"worker-{port}.log"
    full_env = {
        **os.environ,
        **env,
        "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "VALUELOOP_METRICS_PORT": str(port),
        "VALUELOOP_DATA_DIR": str(workdir / "data"),
    }
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", "worker"],
            env=full_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    w = WorkerProc(proc, port, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if w.get("/health")[0] == 200:
                return w
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.3)
    w.stop(signal.SIGKILL)
    raise AssertionError(f"worker not ready in 90 s:\n{log.read_text()[-4000:]}")


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
