"""The operable stack end to end: real Prometheus with the shipped rules scraping a real worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from stream_app import codec, simulate
from stream_app.demo import Processes, firing_alerts, http_get, start_prometheus
from stream_app.producer import Sender, ensure_topics
from stream_app.settings import Settings
from tests.contract.dashboards import dashboard_queries
from tests.integration.workerproc import WorkerProc, start_worker, topic_env

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert status == 200, (expr, body[:300])
    return list(orjson.loads(body)["data"]["result"])


def _wait_consumed(worker: WorkerProc, n: int, timeout: float = 240) -> None:
    roles = ("deployments", "telemetry", "workflow", "incidents")
    deadline = time.monotonic() + timeout
    done = 0.0
    while time.monotonic() < deadline:
        done = sum(worker.metric("valueloop_events_accepted_total", topic=r) for r in roles) + sum(
            worker.metric("valueloop_events_rejected_total", topic=r) for r in roles
        )
        if done >= n:
            return
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"worker consumed {done} of {n}")


def _wait_alert(prom: str, name: str, service: str, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alerts = [a for a in firing_alerts(prom) if a["labels"].get("alertname") == name]
        if any(a["labels"].get("service") == service for a in alerts):
            return alerts
        time.sleep(1)
    raise AssertionError(f"{name} not firing for {service}: {firing_alerts(prom)}")


@pytest.mark.skipif(PROMETHEUS is None and not os.environ.get("CI"), reason="no prometheus")
def test_alerts_fire_for_the_bad_release_and_every_panel_has_data(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    assert PROMETHEUS and PROMTOOL, "CI installs Debian's prometheus package"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix), "VALUELOOP_APP_ID": f"{prefix}-app"}
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        **{k[len("VALUELOOP_") :].lower(): v for k, v in env.items()},
    )
    ensure_topics(settings)
    topics = settings.topic_names()
    sc = simulate.demo_scenario(7)
    plans = dict(zip([r.id for r in simulate.releases(sc)], sc.releases, strict=True))
    bad = next(rid for rid, p in plans.items() if p.label == "bad")
    rollback = min(p.time for p in sc.releases if p.label == "rollback")
    events = list(simulate.generate(sc))
    # Phase 1 ends before the rollback: the bad release is the current one of its service.
    first = [e for e in events if e.time < rollback]
    rest = [e for e in events if e.time >= rollback]
    sender = Sender(settings)
    procs = Processes()
    worker = start_worker(kafka_bootstrap, env, tmp_path)
    try:
        prom = start_prometheus(procs, tmp_path, worker.port, dict(os.environ), Console(quiet=True))
        assert prom is not None
        for e in first:
            sender.send(topics[codec.role_of(e)], codec.encode(e), codec.key_of(e))
        sender.flush(60)
        _wait_consumed(worker, len(first))

        alerts = _wait_alert(prom, "ReleaseDegradedCriticalKPI", "checkout")
        fired = {
            (a["labels"]["service"], a["labels"]["kpi"], a["labels"]["version"]) for a in alerts
        }
        assert ("checkout", "conversion", plans[bad].version) in fired
        neutral = {p.service for p in plans.values() if p.label == "neutral" and p.time < rollback}
        assert neutral and not any(s in neutral for s, _, _ in fired), fired
        for a in alerts:
            assert a["annotations"]["summary"] and a["annotations"]["runbook"]

        # Phase 2: the rest of the story (rollback, incident resolved, more releases).
        for e in rest:
            sender.send(topics[codec.role_of(e)], codec.encode(e), codec.key_of(e))
        sender.flush(60)
        _wait_consumed(worker, len(events))
        time.sleep(8)  # two scrape + evaluation rounds of 2 s, and the worker's 2 s report timer

        empty = []
        for dashboard, title, expr in dashboard_queries():
            if not _query(prom, expr):
                empty.append(f"{dashboard} / {title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)

        exposition = worker.get("/metrics")[1]
        check = subprocess.run(
            [PROMTOOL, "check", "metrics"],
            input=exposition,
            text=True,
            capture_output=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        procs.stop_all()
        worker.stop()
