"""The shipped Prometheus and Alertmanager configuration passes promtool, amtool and rule tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_app.core.types import KpiJudgement, VerdictRecord
from stream_app.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def _tool(name: str) -> str:
    """Path of a Prometheus tool; CI must have it (Debian's prometheus/alertmanager packages)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found: .ci/run must install Debian's prometheus packages")
        pytest.skip(f"{name} not installed (apt-get install prometheus prometheus-alertmanager)")
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )


def _alerts() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    out[rule["alert"]] = rule
    return out


def _alert_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def test_rule_files_pass_promtool_check() -> None:
    assert RULE_FILES, "no rule files in deploy/prometheus/rules"
    res = _run(_tool("promtool"), "check", "rules", *RULE_FILES)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_unit_tests_pass() -> None:
    assert TEST_FILES, "no promtool unit tests in deploy/prometheus/tests"
    res = _run(_tool("promtool"), "test", "rules", *TEST_FILES)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = _alert_cases()
    for name in _alerts():
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no test case where it fires"
        assert any(not c.get("exp_alerts") for c in mine), (
            f"{name}: no test case where it is silent"
        )


def test_every_firing_alert_names_severity_service_and_release() -> None:
    """Checked on the alerts promtool saw firing, so labels produced by the expression count too."""
    for case in _alert_cases():
        for alert in case.get("exp_alerts") or []:
            labels = alert["exp_labels"]
            assert labels["severity"] in {"page", "ticket"}, case["alertname"]
            assert labels.get("service"), f"{case['alertname']}: no service label"
            if case["alertname"].startswith("Release"):
                assert labels.get("kpi") and labels.get("version"), case["alertname"]


def test_every_alert_has_a_summary_description_and_runbook() -> None:
    alerts = _alerts()
    assert {
        "ReleaseDegradedCriticalKPI",
        "ReleaseVerdictStuckInconclusive",
        "ChangeFailureRateHigh",
        "BottleneckWaitGrowing",
        "WorkerConsumerLagHigh",
        "DeadLetterRateHigh",
        "WorkerNotReady",
        "WorkerIntakeStalled",
    } <= set(alerts)
    for name, rule in alerts.items():
        ann = rule.get("annotations", {})
        for key in ("summary", "description"):
            assert str(ann.get(key, "")).strip(), f"{name}: annotation {key} missing"
        assert str(ann.get("runbook") or ann.get("runbook_url") or "").strip(), (
            f"{name}: no runbook"
        )
        assert rule["labels"]["severity"] in {"page", "ticket"}, name


def test_critical_degradation_pages_at_once_interim_or_final() -> None:
    alerts = _alerts()
    page = alerts["ReleaseDegradedCriticalKPI"]
    assert page["labels"]["severity"] == "page"
    assert page.get("for", "0m") in {"0m", "0s"}
    # A decisive verdict pages at the look that decides it, whatever its phase.
    assert 'critical="true"' in page["expr"] and "phase" not in page["expr"]
    assert "ReleaseDegradedEarlyWarning" not in alerts


def test_prometheus_config_passes_promtool_check() -> None:
    res = _run(_tool("promtool"), "check", "config", PROM / "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/*.yml"]
    assert any(j["job_name"].startswith("valueloop") for j in config["scrape_configs"])


def test_demo_template_renders_to_a_fast_valid_config(tmp_path: Path) -> None:
    template = (PROM / "prometheus.demo.yml.template").read_text()
    for placeholder in ("{{WORKER_TARGET}}", "{{ALERTMANAGER_TARGET}}", "{{RULES_DIR}}"):
        assert placeholder in template
    text = (
        template.replace("{{WORKER_TARGET}}", "127.0.0.1:19108")
        .replace("{{ALERTMANAGER_TARGET}}", "127.0.0.1:19093")
        .replace("{{RULES_DIR}}", str(PROM / "rules"))
    )
    assert "{{" not in text.split("rule_files:")[1]
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(text)
    res = _run(_tool("promtool"), "check", "config", rendered)
    assert res.returncode == 0, res.stdout + res.stderr
    # Every shipped rule file is loaded, so the demo evaluates the same alerts as production.
    assert f"{len(RULE_FILES)} rule files found" in res.stdout
    config = yaml.safe_load(text)
    assert config["global"]["scrape_interval"] == "2s"
    assert config["global"]["evaluation_interval"] == "2s"
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["127.0.0.1:19108"]


def test_alertmanager_config_passes_amtool_check() -> None:
    res = _run(_tool("amtool"), "check-config", ALERTMANAGER)
    assert res.returncode == 0, res.stdout + res.stderr


def test_alertmanager_groups_by_service_and_posts_to_the_webhook() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert config["route"]["group_by"] == ["service"]
    urls = {
        hook["url"]
        for receiver in config["receivers"]
        for hook in receiver.get("webhook_configs", [])
    }
    assert urls == {"http://127.0.0.1:9099/hook"}


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "service=checkout"], "page"),
        (["severity=ticket", "service=checkout"], "ticket"),
        (["service=checkout"], "default"),
    ],
)
def test_alertmanager_routes_pages_and_tickets_apart(labels: list[str], receiver: str) -> None:
    res = _run(
        _tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == receiver


def test_worker_metrics_pass_promtool_check_metrics() -> None:
    """Every series the worker can export follows Prometheus naming (units, _total, no _count)."""
    m = Metrics()
    m.ready.set(1)
    m.accepted("telemetry")
    m.rejected("telemetry", "invalid-json")
    m.samples.labels("accepted").inc()
    judgement = KpiJudgement(
        kpi="conversion",
        verdict="degraded",
        reason="interval below zero",
        reason_code="significant",
        change=-0.08,
        ci_low=-0.11,
        ci_high=-0.05,
    )
    m.observe_verdict(
        VerdictRecord(
            release_id="r1",
            service="checkout",
            version="2.4.1",
            release_time=time.time(),
            kpi="conversion",
            critical=True,
            phase="final",
            revision=1,
            baseline_window=(0.0, 3600.0),
            post_window=(3600.0, 7200.0),
            judgement=judgement,
        )
    )
    m.watermark.labels("checkout").set(1.0)
    for q in ("0.5", "0.85"):
        m.flow_time.labels("checkout", q).set(1.0)
        m.stage_wait.labels("checkout", "review", q).set(1.0)
        m.stage_active.labels("checkout", "review", q).set(1.0)
        m.lead_time.labels("checkout", q).set(1.0)
        m.recovery_time.labels("checkout", q).set(1.0)
    m.flow_efficiency.labels("checkout").set(0.2)
    m.flow_load.labels("checkout", "review").set(3)
    m.flow_finished.labels("checkout", "feature").inc()
    m.flow_distribution.labels("checkout", "feature").set(1.0)
    m.bottleneck.labels("checkout", "review").set(1)
    m.bottleneck_wait_share.labels("checkout").set(0.5)
    m.deployments.labels("checkout").inc()
    m.deployment_failures.labels("checkout", "degraded-kpi").inc()
    m.change_failure.labels("checkout").set(1.0)
    m.consumer_lag.labels("telemetry").set(0)
    res = subprocess.run(
        [_tool("promtool"), "check", "metrics"],
        input=m.render(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, (res.stdout + res.stderr).decode()
