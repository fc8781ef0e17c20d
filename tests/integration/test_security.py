"""SASL/SCRAM end to end on a real broker: right credentials work, wrong ones fail fast and clearly.

The module starts its own broker with a SASL_PLAINTEXT SCRAM-SHA-256 listener (the session broker
stays PLAINTEXT) and stops it by pid. Secrets must never show up in logs, errors or /metrics.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app.broker import BrokerInfo, broker_status, start_broker, stop_broker
from stream_app.errors import BrokerError
from stream_app.preflight import AUTH, UNREACHABLE, probe
from tests.integration.workerproc import free_port, topic_env

pytestmark = pytest.mark.integration

MECHANISM = "SCRAM-SHA-256"
ADMIN_PASSWORD = f"admin-{uuid.uuid4().hex}"
WORKER_PASSWORD = f"worker-{uuid.uuid4().hex}"
WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex}"
SECRETS = (ADMIN_PASSWORD, WORKER_PASSWORD, WRONG_PASSWORD, "another-password")
# The metrics endpoint binds another loopback address than the default 127.0.0.1.
METRICS_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    data_dir = tmp_path_factory.mktemp("kafka-sasl")
    info = start_broker(
        data_dir,
        heap="384m",
        timeout=120,
        die_with_parent=True,
        sasl_users={"admin": ADMIN_PASSWORD, "worker": WORKER_PASSWORD},
        sasl_mechanism=MECHANISM,
    )
    try:
        yield info
    finally:
        stop_broker(data_dir)


def _env(broker: BrokerInfo, user: str, password: str, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        **topic_env(prefix),
        "VALUELOOP_APP_ID": f"{prefix}-app",
        "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "VALUELOOP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "VALUELOOP_KAFKA_SASL_MECHANISM": MECHANISM,
        "VALUELOOP_KAFKA_SASL_USERNAME": user,
        "VALUELOOP_KAFKA_SASL_PASSWORD": password,
    }


def _cli(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _get(host: str, port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def _assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a password appears in {where}"


def test_the_listener_requires_a_scram_login(sasl_broker: BrokerInfo) -> None:
    assert sasl_broker.security_protocol == "SASL_PLAINTEXT"
    assert sasl_broker.bootstrap.startswith("127.0.0.1:")
    sasl = {
        "bootstrap.servers": sasl_broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": MECHANISM,
        "sasl.username": "admin",
    }
    assert probe({**sasl, "sasl.password": ADMIN_PASSWORD}).ok
    refused = probe({**sasl, "sasl.password": WRONG_PASSWORD})
    assert (refused.ok, refused.problem) == (False, AUTH)
    anonymous = probe({"bootstrap.servers": sasl_broker.bootstrap}, timeout=3)
    assert (anonymous.ok, anonymous.problem) == (False, UNREACHABLE)

    # Users' passwords live only in the broker's metadata (SCRAM hashes), never in its config;
    # the files holding the broker's own login are private.
    broker_dir = sasl_broker.data_dir / "broker"
    for name in ("server.properties", "sasl.json"):
        assert stat.S_IMODE((broker_dir / name).stat().st_mode) == 0o600
    for path in broker_dir.glob("*"):
        if path.is_file():
            _assert_no_secret(path.read_text(errors="replace"), str(path))


def test_starting_again_reuses_the_broker_only_with_its_users(sasl_broker: BrokerInfo) -> None:
    users = {"admin": ADMIN_PASSWORD, "worker": WORKER_PASSWORD}
    for same in (users, {"admin": ADMIN_PASSWORD}):
        again = start_broker(sasl_broker.data_dir, sasl_users=same, sasl_mechanism=MECHANISM)
        assert again.pid == sasl_broker.pid
    for other in ({**users, "admin": "another-password"}, {"carol": "another-password"}, None):
        with pytest.raises(BrokerError) as info:
            start_broker(sasl_broker.data_dir, sasl_users=other, sasl_mechanism=MECHANISM)
        _assert_no_secret(str(info.value), "the error")
    assert broker_status(sasl_broker.data_dir) == sasl_broker  # still running


def test_worker_runs_with_the_right_credentials(sasl_broker: BrokerInfo, tmp_path: Path) -> None:
    prefix = f"sec{uuid.uuid4().hex[:8]}"
    admin = _env(sasl_broker, "admin", ADMIN_PASSWORD, prefix)
    ensured = _cli(admin, "topics", "ensure")
    assert ensured.returncode == 0, ensured.stderr
    assert f"{prefix}.telemetry" in ensured.stdout and "created" in ensured.stdout

    port = free_port()
    log = tmp_path / "worker.log"
    env = {
        **_env(sasl_broker, "worker", WORKER_PASSWORD, prefix),
        "VALUELOOP_METRICS_HOST": METRICS_HOST,
        "VALUELOOP_METRICS_PORT": str(port),
        "VALUELOOP_DATA_DIR": str(tmp_path / "data"),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", "worker"],  # log level info
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(proc, port, log)

        # Releases and telemetry produced with credentials are consumed by the worker.
        for args in (
            ("deployment", "--service", "checkout", "--version", "2.0.0"),
            ("sample", "--service", "checkout", "--kpi", "orders", "--value", "3"),
        ):
            sent = _cli(env, "emit", *args)
            assert sent.returncode == 0, sent.stderr
            _assert_no_secret(sent.stdout + sent.stderr, "emit output")
        text = _wait_metrics(proc, port, log)
        assert _sample(text, "valueloop_events_accepted_total", topic="deployments") >= 1
        _assert_no_secret(text, "/metrics")

        # /metrics answers on the configured address only.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    output = log.read_text(errors="replace")
    assert "Authenticated as worker" in output  # aiokafka logged in with SCRAM
    _assert_no_secret(output, "the worker's log")


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited {proc.returncode}:\n{log.read_text()[-4000:]}"
        try:
            if _get(METRICS_HOST, port, "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"worker not ready in 90 s:\n{log.read_text()[-4000:]}")


def _wait_metrics(proc: subprocess.Popen[bytes], port: int, log: Path) -> str:
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker died:\n{log.read_text()[-3000:]}"
        text = _get(METRICS_HOST, port, "/metrics")[1]
        if _sample(text, "valueloop_events_accepted_total", topic="telemetry") >= 1:
            return text
        time.sleep(0.3)
    raise AssertionError(f"telemetry not accepted:\n{log.read_text()[-3000:]}")


def test_worker_with_a_wrong_password_exits_at_once(
    sasl_broker: BrokerInfo, tmp_path: Path
) -> None:
    env = {
        **_env(sasl_broker, "worker", WRONG_PASSWORD, f"sec{uuid.uuid4().hex[:8]}"),
        "VALUELOOP_METRICS_PORT": str(free_port()),
        "VALUELOOP_DATA_DIR": str(tmp_path / "data"),
    }
    started = time.monotonic()
    # The timeout only catches a worker that hangs; the time taken is printed, not asserted.
    done = _cli(env, "worker", timeout=60)
    elapsed = time.monotonic() - started
    print(f"worker with a wrong password exited {done.returncode} after {elapsed:.1f} s")
    assert done.returncode != 0
    assert "Kafka authentication failed for user 'worker' (SASL_PLAINTEXT SCRAM-SHA-256)" in (
        done.stderr
    )
    assert "check VALUELOOP_KAFKA_SASL_USERNAME/PASSWORD" in done.stderr
    _assert_no_secret(done.stdout + done.stderr, "the worker's output")


def test_emit_with_a_wrong_password_fails_clearly(sasl_broker: BrokerInfo) -> None:
    env = _env(sasl_broker, "admin", WRONG_PASSWORD, f"sec{uuid.uuid4().hex[:8]}")
    sent = _cli(env, "emit", "sample", "--service", "checkout", "--kpi", "orders", "--value", "1")
    assert sent.returncode == 1
    assert "error: Kafka authentication failed for user 'admin'" in sent.stderr
    _assert_no_secret(sent.stdout + sent.stderr, "emit output")
    ensured = _cli(env, "topics", "ensure")
    assert ensured.returncode == 1
    assert "error: Kafka authentication failed for user 'admin'" in ensured.stderr


def test_worker_without_credentials_or_broker_says_what_to_check(
    sasl_broker: BrokerInfo, tmp_path: Path
) -> None:
    base = {
        **os.environ,
        "VALUELOOP_METRICS_PORT": str(free_port()),
        "VALUELOOP_DATA_DIR": str(tmp_path / "data"),
    }
    for bootstrap in (sasl_broker.bootstrap, f"127.0.0.1:{free_port()}"):
        # PLAINTEXT against the SASL listener, then a port nothing listens on.
        done = _cli({**base, "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS": bootstrap}, "worker")
        assert done.returncode != 0
        assert f"error: Kafka at {bootstrap} did not answer" in done.stderr
        assert "VALUELOOP_KAFKA_SECURITY_PROTOCOL (now PLAINTEXT)" in done.stderr
