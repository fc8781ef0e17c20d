"""A `valueloop worker` subprocess: start it, talk to it over HTTP, stop it by its process group.

The one implementation behind bench.common (benchmarks), bench._recovery_harness (reliability
harnesses) and tests/integration/workerproc.py (integration tests). A worker is
`python -m stream_app worker` in its own session (so it is stopped with its children by signalling
its process group, by pid); its /health, /metrics and /state pages are served and reached on
127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
BOOTSTRAP_ENV = "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS"
# What a request to a worker that is not (yet, or any more) listening raises.
UNREACHABLE = (urllib.error.URLError, ConnectionError, OSError)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the forked child before exec: Linux SIGKILLs it when the parent process dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def spawn(
    env: Mapping[str, str],
    log: Path,
    *,
    port: int,
    data_dir: Path,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `python -m stream_app worker` in its own session; does not wait.

    Its environment is ours, then `env`, then its HTTP port (on 127.0.0.1) and data dir; stdout
    and stderr go to `log`. With `die_with_parent`, Linux kills it when this process dies.
    """
    full_env = {
        **os.environ,
        **env,
        "VALUELOOP_METRICS_HOST": HOST,
        "VALUELOOP_METRICS_PORT": str(port),
        "VALUELOOP_DATA_DIR": str(data_dir),
    }
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "stream_app", "worker"],
            env=full_env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a worker's page: (status, body); raises one of UNREACHABLE when nobody answers."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def try_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """`http_get`, or None when the worker does not answer."""
    try:
        return http_get(port, path, timeout)
    except UNREACHABLE:
        return None


def parse_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            yield s.name, s.labels, float(s.value)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0.0 when none)."""
    return sum(
        (
            v
            for n, have, v in parse_samples(text)
            if n == name and all(have.get(k) == x for k, x in labels.items())
        ),
        0.0,
    )


def stop_group(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0
) -> None:
    """Send `sig` to the process group of `proc` (by its pid) and reap it; SIGKILL after
    `timeout` seconds. Nothing when it has already exited."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_healthy(
    proc: subprocess.Popen[bytes],
    port: int,
    *,
    timeout: float,
    tail: Callable[[], str],
    name: str = "worker",
    error: type[Exception] = AssertionError,
    interval: float = 0.3,
) -> None:
    """Wait until the worker's /health answers 200; raises `error` (with the end of its log,
    `tail()`) when it exits first or is not ready in `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(f"{name} exited {proc.returncode}:\n{tail()}")
        got = try_get(port, "/health")
        if got is not None and got[0] == 200:
            return
        time.sleep(interval)
    raise error(f"{name} not ready in {timeout:.0f} s:\n{tail()}")


@dataclass
class WorkerProc:
    """A started worker subprocess and how to reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-chars:]

    def get(self, path: str) -> tuple[int, str]:
        """GET one of its pages: (status, body text)."""
        status, body = http_get(self.port, path)
        return status, body.decode()

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` in /metrics whose labels include `labels` (0.0 when
        none); raises when the worker does not answer."""
        return metric_value(self.metrics(), name, **labels)

    def wait_for(self, name: str, value: float, timeout: float = 60.0, **labels: str) -> float:
        """Wait until `metric(name, **labels)` is at least `value`; returns it."""
        deadline = time.monotonic() + timeout
        got = 0.0
        while time.monotonic() < deadline:
            assert self.alive(), f"worker died:\n{self.tail()}"
            try:
                got = self.metric(name, **labels)
            except UNREACHABLE:
                got = 0.0
            if got >= value:
                return got
            time.sleep(0.3)
        raise AssertionError(f"{name}{labels} = {got} < {value}\n{self.tail()}")

    def wait_series(self, name: str, value: float, timeout: float = 60.0, **labels: str) -> float:
        """Wait until a sample of `name` with `labels` is exported and the sum of those samples
        equals `value` (a gauge that must appear first, e.g. the lag read by a timer)."""
        deadline = time.monotonic() + timeout
        seen: list[float] = []
        while time.monotonic() < deadline:
            assert self.alive(), f"worker died:\n{self.tail()}"
            try:
                text = self.metrics()
            except UNREACHABLE:
                time.sleep(0.3)
                continue
            seen = [
                v
                for n, have, v in parse_samples(text)
                if n == name and all(have.get(k) == x for k, x in labels.items())
            ]
            if seen and sum(seen) == value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"{name}{labels}: {seen or 'not exported'} != {value}\n{self.tail()}")

    def wait_ready(
        self,
        timeout: float,
        *,
        error: type[Exception] = AssertionError,
        interval: float = 0.3,
        stop_sig: int = signal.SIGKILL,
    ) -> None:
        """Wait until /health answers 200; stops it with `stop_sig` and raises `error` when not."""
        try:
            wait_healthy(
                self.proc,
                self.port,
                timeout=timeout,
                tail=lambda: self.tail(4000),
                error=error,
                interval=interval,
            )
        except error:
            self.stop(stop_sig)
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """`sig` to its process group, SIGKILL after `timeout` seconds."""
        stop_group(self.proc, sig, timeout)


W = TypeVar("W", bound=WorkerProc)


def launch(bootstrap: str, env: Mapping[str, str], workdir: Path, *, data: str, kind: type[W]) -> W:
    """Start a worker on `bootstrap` (does not wait), as a `kind`: its log is
    `workdir/worker-<port>.log`, its data dir `workdir/<data>` (`data` may name `{port}`)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"worker-{port}.log"
    proc = spawn(
        {**env, BOOTSTRAP_ENV: bootstrap},
        log,
        port=port,
        data_dir=workdir / data.format(port=port),
    )
    return kind(proc, port, log)
