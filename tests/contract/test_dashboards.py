"""The Grafana dashboards and provisioning: valid, templated, querying only exported series."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_app.metrics import Metrics
from tests.contract.dashboards import (
    VARIABLE_VALUES,
    concrete,
    dashboard_queries,
    load_dashboards,
    metric_names,
    raw_queries,
    recorded_names,
    rule_expressions,
    selectors,
)

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
# Series Prometheus itself produces, allowed in rules next to the worker's own.
PROMETHEUS_SERIES = frozenset({"up"})
DS_REF = {"type": "prometheus", "uid": "${datasource}"}


def _exported_names() -> set[str]:
    """Series names the worker exports; counters are exposed with their `_total` suffix."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def _exported_labels() -> dict[str, set[str]]:
    """Series name -> its label names, plus the target labels Prometheus adds when scraping."""
    out: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        # _name/_labelnames: prometheus_client keeps no public accessor for a metric's label names.
        if hasattr(metric, "_labelnames"):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            out[name] = set(metric._labelnames) | {"job", "instance"}
    return out


def _recorded_sources() -> dict[str, set[str]]:
    """Recording rule name -> the exported series it is computed from."""
    out: dict[str, set[str]] = {}
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    out[rule["record"]] = metric_names(rule["expr"])
    return out


def _variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash["templating"]["list"]}


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dash["panels"] if p.get("type") != "row"]


def test_the_four_dashboards_parse_with_unique_uids() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == {"release-impact", "value-stream", "dora", "value"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, dash in dashboards.items():
        assert dash["title"] and dash["panels"], name
        ids = [p["id"] for p in _panels(dash)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"


def test_every_panel_queries_prometheus_through_the_datasource_variable() -> None:
    for name, dash in load_dashboards().items():
        assert _variables(dash)["datasource"]["type"] == "datasource", name
        assert _variables(dash)["datasource"]["query"] == "prometheus", name
        for panel in _panels(dash):
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == DS_REF, where
            assert panel["targets"], f"{where}: no targets"
            for target in panel["targets"]:
                assert target.get("expr", "").strip(), f"{where}: target without expr"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{where}: wider than the dashboard"


def test_dashboards_filter_by_service_or_value_stream() -> None:
    dashboards = load_dashboards()
    expected = {
        "release-impact": "service",
        "dora": "service",
        "value-stream": "value_stream",
        "value": "service",
    }
    for name, var in expected.items():
        variable = _variables(dashboards[name])[var]
        # "All" must become a regex that matches every value, as concrete() assumes.
        assert variable["includeAll"] and variable["allValue"] == VARIABLE_VALUES[var]
        assert variable["datasource"] == DS_REF
        for title, expr in raw_queries(dashboards[name]):
            if metric_names(expr) - {
                "valueloop_events_accepted_total",
                "valueloop_deadletter_messages_total",
            }:
                assert f"${var}" in expr, f"{name}: {title} ignores ${var}"


def test_every_query_is_concrete_after_substitution() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    for dash, title, expr in queries:
        assert "$" not in expr, f"{dash}: {title}: unreplaced variable in {expr}"


def test_every_series_used_by_dashboards_and_rules_is_exported() -> None:
    exported = _exported_names()
    recorded = recorded_names()
    used: list[tuple[str, str]] = [(f"rule {n}", e) for n, e in rule_expressions()]
    for name, dash in load_dashboards().items():
        used += [(f"{name}: {t}", e) for t, e in raw_queries(dash)]
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                used.append((f"{name}: variable {var['name']}", var["definition"]))
    for where, expr in used:
        names = metric_names(expr)
        assert names, f"{where}: selects no series: {expr}"
        unknown = names - exported - recorded - PROMETHEUS_SERIES
        assert not unknown, f"{where}: {sorted(unknown)} not in stream_app.metrics"
    for record, sources in _recorded_sources().items():
        assert sources <= exported, f"recording rule {record} reads {sorted(sources - exported)}"


def test_every_label_matcher_names_a_label_of_its_series() -> None:
    """A matcher on a label the series lacks silently selects nothing (e.g. after a rename)."""
    labels = _exported_labels()
    exprs = [e for _, e in rule_expressions()]
    for dash in load_dashboards().values():
        exprs += [e for _, e in raw_queries(dash)]
    checked = 0
    for expr in exprs:
        for name, matched in selectors(expr):
            if name in labels:
                checked += 1
                assert matched <= labels[name], (
                    f"{name} has no label {sorted(matched - labels[name])}"
                )
    assert checked >= 20


def _shown(dash: dict[str, Any]) -> set[str]:
    """Exported series a dashboard shows, seeing through recording rules."""
    sources = _recorded_sources()
    out: set[str] = set()
    for _, expr in raw_queries(dash):
        for name in metric_names(expr):
            out |= sources.get(name, {name})
    return out


def test_each_dashboard_shows_what_it_promises() -> None:
    dashboards = load_dashboards()
    assert {
        "valueloop_release_change_ratio",
        "valueloop_release_change_ci_low_ratio",
        "valueloop_release_change_ci_high_ratio",
        "valueloop_release_verdict",
        "valueloop_release_degraded",
    } <= _shown(dashboards["release-impact"])
    assert {
        "valueloop_flow_time_seconds",
        "valueloop_stage_wait_seconds",
        "valueloop_stage_active_seconds",
        "valueloop_flow_efficiency_ratio",
        "valueloop_flow_load_items",
        "valueloop_bottleneck_stage",
    } <= _shown(dashboards["value-stream"])
    assert {
        "valueloop_deployments_total",
        "valueloop_lead_time_seconds",
        "valueloop_change_failure_ratio",
        "valueloop_recovery_time_seconds",
    } <= _shown(dashboards["dora"])
    assert {
        "valueloop_ledger_releases",
        "valueloop_ledger_cost_seconds",
        "valueloop_ledger_delivered_per_day",
    } <= _shown(dashboards["value"])


def test_release_markers_are_placed_at_the_release_event_time() -> None:
    annotations = load_dashboards()["release-impact"]["annotations"]["list"]
    releases = [a for a in annotations if a["name"] == "Releases"]
    assert len(releases) == 1
    ann = releases[0]
    assert ann["datasource"] == DS_REF and ann["enable"]
    # Grafana reads the series value as the marker time (ms), so the marker sits at the release's
    # event time even when the worker judged it later.
    assert ann["useValueForTime"] is True
    assert "valueloop_release_timestamp_seconds" in ann["expr"] and "* 1000" in ann["expr"]
    assert "version" in ann["tagKeys"].split(",")


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each concrete query as a recording rule expression."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not found: .ci/run must install Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rules = [
        {"record": f"dashboard:query_{i}:check", "expr": expr}
        for i, (_, _, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    res = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_concrete_replaces_grafana_variables() -> None:
    expr = 'rate(x{service=~"$service", kpi=~"${kpi}"}[$__rate_interval])'
    assert concrete(expr) == 'rate(x{service=~".+", kpi=~".+"}[1m])'
    with pytest.raises(KeyError):
        concrete('x{team="$team"}')


def test_metric_names_sees_through_functions_and_matchers() -> None:
    expr = (
        'max by (service, version) (valueloop_release_timestamp_seconds{service=~"$service"} '
        "* on (job, instance, service) group_left (version) valueloop_release_info) * 1000"
    )
    assert metric_names(expr) == {"valueloop_release_timestamp_seconds", "valueloop_release_info"}
    assert metric_names("sum(rate(a_total[5m])) > 0.1 and on (x) b:c:d offset 1h") == {
        "a_total",
        "b:c:d",
    }
    assert metric_names('label_values(valueloop_release_info{service=~"$service"}, kpi)') == {
        "valueloop_release_info"
    }


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "valueloop.yml").read_text())
    [provider] = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
