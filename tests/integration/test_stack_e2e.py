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
from tests.contract import rollout_gates as gates
from tests.contract.dashboards import dashboard_queries
from tests.integration.workerproc import WorkerProc, start_worker, topic_env

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert status == 200, (expr, body[:300])
    return list(orjson.loads(body)["data"]["result"])


def _query_range(
    prom: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    status, body = http_get(f"{prom}/api/v1/query_range?{q}")
    assert status == 200, (expr, body[:300])
    return list(orjson.loads(body)["data"]["result"])


def _gate(prom: str, since: float, service: str, version: str) -> tuple[list[float], list[str]]:
    """The gates' query for (service, version) now: values, and Argo's, Flagger's, Keptn's call."""
    args = {"service": service, "version": version}
    expr = gates.render_argo(service, version)
    assert expr == gates.render_flagger(args) == gates.render_keptn(args)
    values = [float(s["value"][1]) for s in _query(prom, expr)]
    # Keptn runs a range query and needs one series across it: over the whole run, where the
    # release went from unjudged to judged, both sides of the `or` must merge into one.
    now = time.time()
    whole = _query_range(prom, expr, since, now, 2)
    assert len(whole) <= 1, whole
    # Keptn reads the first point of its timeframe (here `recent` of 1 s: the value now).
    keptn = gates.keptn_outcome(gates.keptn_value(_query_range(prom, expr, now - 1, now, 60)))
    calls = [gates.argo_phase(gates.argo_metric(), values), gates.flagger_outcome(0, values), keptn]
    return values, calls


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
        since = time.time()
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

        # Rollout gates (deploy/rollouts): 1 and a failed analysis for the bad release, 0 and a
        # pass for a judged neutral one, no value (never a pass) for a service valueloop lacks.
        values, calls = _gate(prom, since, "checkout", plans[bad].version)
        assert values == [1.0], values
        assert calls == ["Failed", "halt: above max", "fail"], calls
        info = 'valueloop_release_info{{service="{}",version="{}"}}'
        verdicts = 'valueloop_release_degraded{{service="{}",critical="true"}}'
        judged = [
            p
            for p in plans.values()
            if p.service in neutral
            and p.time < rollback
            and _query(prom, info.format(p.service, p.version))
            and _query(prom, verdicts.format(p.service))
        ]
        assert judged, "no neutral release judged before the rollback"
        for p in judged:
            values, calls = _gate(prom, since, p.service, p.version)
            assert values == [0.0], (p, values)
            assert calls == ["Successful", "pass", "pass"], (p, calls)
        # The bad release's version asked of another service, and a service without data.
        assert _gate(prom, since, judged[0].service, plans[bad].version)[0] == [0.0]
        values, calls = _gate(prom, since, "no-such-service", "1.0.0")
        assert values == [] and calls[0] == "Error" and "no values" in calls[1] + calls[2], calls
        # Keptn without the version arg: Prometheus refuses what the template renders instead.
        missing = urllib.parse.quote(gates.render_keptn({"service": "checkout"}))
        assert http_get(f"{prom}/api/v1/query?query={missing}")[0] == 400

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
