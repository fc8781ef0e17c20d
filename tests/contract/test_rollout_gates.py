"""deploy/rollouts: the gate templates validate against their CRD schemas and their query works.

No cluster here: each resource is validated with ``jsonschema`` against the openAPIV3Schema of its
CRD (vendored in tests/contract/data/crds, README there), made strict the way ``kubectl apply
--validate=strict`` is: a field the schema does not know is an error, not silently pruned. The query
is run by ``promtool test rules`` over series shaped as the worker exports them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stream_app.core.types import KpiJudgement, Phase, Verdict, VerdictRecord
from stream_app.metrics import Metrics
from tests.contract import rollout_gates as gates

CRDS = Path(__file__).resolve().parent / "data" / "crds"
FILES = ("argo-rollouts.yaml", "flagger.yaml", "keptn.yaml")
# The Canary's thresholdRange the README documents for the Flagger check.
FLAGGER_MAX = 0.0
GATE_SERIES = (
    "valueloop_release_degraded",
    "valueloop_release_info",
    "valueloop_watermark_timestamp_seconds",
)
KEPTN_MISSING_ARGS = "the valueloop Analysis needs the args service and version"


def _strict(schema: Any) -> Any:
    """The schema with unknown fields forbidden wherever Kubernetes would prune them."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.json")):
        crd = json.loads(path.read_text())
        out[(f"{crd['group']}/{crd['version']}", crd["kind"])] = crd
    return out


def _errors(doc: dict[str, Any]) -> list[str]:
    crd = _crds()[(doc["apiVersion"], doc["kind"])]
    validator = jsonschema.Draft7Validator(_strict(crd["openAPIV3Schema"]))
    errors = validator.iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def _all_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name in FILES for doc in gates.docs(name)]


@pytest.mark.parametrize(
    ("name", "doc"), _all_docs(), ids=lambda v: v if isinstance(v, str) else v["kind"]
)
def test_each_resource_validates_against_its_crd_schema(name: str, doc: dict[str, Any]) -> None:
    assert (doc["apiVersion"], doc["kind"]) in _crds(), f"{name}: no vendored CRD for {doc['kind']}"
    assert _errors(doc) == []
    # A DNS-1123 subdomain, as the API server requires of names.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", doc["metadata"]["name"])
    assert "namespace" not in doc["metadata"], "applied in the namespace of the app it gates"


@pytest.mark.parametrize("name", FILES)
def test_validation_rejects_an_unknown_field_and_a_wrong_type(name: str) -> None:
    doc = copy.deepcopy(gates.docs(name)[0])
    doc["spec"]["qeury"] = "typo"
    assert any("qeury" in e for e in _errors(doc))
    doc = copy.deepcopy(gates.docs(name)[0])
    doc["spec"] = ["not", "an", "object"]
    assert _errors(doc)


def test_the_vendored_schemas_name_their_source() -> None:
    readme = (CRDS / "README.md").read_text()
    for path in CRDS.glob("*.json"):
        crd = json.loads(path.read_text())
        assert crd["source"] in readme and path.name in readme


def test_references_between_the_keptn_resources_resolve() -> None:
    provider = gates.one("keptn.yaml", "KeptnMetricsProvider")
    template = gates.one("keptn.yaml", "AnalysisValueTemplate")
    definition = gates.one("keptn.yaml", "AnalysisDefinition")
    assert template["spec"]["provider"]["name"] == provider["metadata"]["name"]
    refs = [o["analysisValueTemplateRef"]["name"] for o in definition["spec"]["objectives"]]
    assert refs == [template["metadata"]["name"]]
    assert definition["spec"]["objectives"][0]["keyObjective"] is True


def test_argo_takes_service_and_version_and_fails_on_the_first_degraded_measurement() -> None:
    template = gates.one("argo-rollouts.yaml", "AnalysisTemplate")
    required = {a["name"] for a in template["spec"]["args"] if "value" not in a}
    assert required == {"service", "version"}
    assert gates.argo_metric()["failureLimit"] == 0


def test_the_three_templates_run_the_same_query() -> None:
    argo = gates.render_argo("checkout", "1.4.2")
    args = {"service": "checkout", "version": "1.4.2"}
    assert argo == gates.render_flagger(args) == gates.render_keptn(args)
    assert 'service="checkout"' in argo and 'version="1.4.2"' in argo
    assert "{{" not in argo


def test_a_missing_argument_never_renders_a_query_that_passes() -> None:
    with pytest.raises(KeyError):  # Flagger renders with missingkey=error: the check halts
        gates.render_flagger({"service": "checkout"})
    # Keptn renders a missing arg as "<no value>", which for the version would read 0: the template
    # sends Prometheus a sentence instead (the stack e2e test checks Prometheus refuses it).
    for args in ({"version": "1.4.2"}, {"service": "checkout"}, {}):
        assert gates.render_keptn(args) == KEPTN_MISSING_ARGS


@pytest.mark.parametrize(
    ("result", "argo", "flagger", "keptn"),
    [
        ([1.0], "Failed", "halt: above max", "fail"),
        ([0.0], "Successful", "pass", "pass"),
        ([], "Error", "halt: no values found", "error: no values in query result"),
    ],
)
def test_each_controller_reads_1_as_fail_0_as_pass_and_nothing_as_no_pass(
    result: list[float], argo: str, flagger: str, keptn: str
) -> None:
    assert gates.argo_phase(gates.argo_metric(), result) == argo
    assert gates.flagger_outcome(FLAGGER_MAX, result) == flagger
    matrix = [{"metric": {}, "values": [[0, str(v)] for v in result]}] if result else []
    assert gates.keptn_outcome(gates.keptn_value(matrix)) == keptn


def test_the_condition_evaluator_follows_argo() -> None:
    # Argo's EvaluateResult: both false is Inconclusive; one condition alone decides both ways.
    assert gates.argo_phase({"successCondition": "result[0] == 0"}, [0.5]) == "Failed"
    assert gates.argo_phase({"failureCondition": "result[0] >= 1"}, [0.5]) == "Successful"
    both = {"successCondition": "result[0] == 0", "failureCondition": "result[0] >= 1"}
    assert gates.argo_phase(both, [0.5]) == "Inconclusive"
    assert gates.argo_phase({}, []) == "Successful"
    with pytest.raises(NotImplementedError):
        gates.eval_condition("all(result, {# < 1})", [0.0])


def _verdict(
    m: Metrics, service: str, version: str, kpi: str, phase: Phase, verdict: Verdict
) -> None:
    """Feed one verdict to the worker's metric set (conversion is critical, sessions is not)."""
    m.observe_verdict(
        VerdictRecord(
            release_id=f"{service}@{version}",
            service=service,
            version=version,
            release_time=float(version),  # the versions here are numbers: later ones are newer
            kpi=kpi,
            critical=kpi == "conversion",
            phase=phase,
            revision=1,
            baseline_window=(0.0, 3600.0),
            post_window=(3600.0, 7200.0),
            judgement=KpiJudgement(
                kpi=kpi,
                verdict=verdict,
                reason="test",
                reason_code="significant",
            ),
        )
    )


def _input_series(m: Metrics, instance: str) -> list[dict[str, str]]:
    """The worker's exposition as promtool input series, with the labels a scrape adds."""
    series = []
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            if not sample.name.startswith(GATE_SERIES):
                continue
            labels = {"job": "valueloop", "instance": f"{instance}:9108", **sample.labels}
            inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
            series.append({"series": f"{sample.name}{{{inner}}}", "values": f"{sample.value:g}x10"})
    return series


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not found: .ci/run must install Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def test_the_query_answers_1_0_or_nothing_over_the_series_the_worker_exports(
    tmp_path: Path,
) -> None:
    w1 = Metrics()
    # checkout: 1.9 neutral, then 2.0 degrades the critical KPI at an interim look.
    _verdict(w1, "checkout", "1.9", "conversion", "final", "neutral")
    _verdict(w1, "checkout", "2.0", "conversion", "interim", "degraded")
    _verdict(w1, "checkout", "2.0", "sessions", "interim", "inconclusive")
    # payments 5.1: degraded in the final verdict.
    _verdict(w1, "payments", "5.1", "conversion", "interim", "inconclusive")
    _verdict(w1, "payments", "5.1", "conversion", "final", "degraded")
    # search 2.7: an interim early warning the final verdict overturns.
    _verdict(w1, "search", "2.7", "conversion", "interim", "degraded")
    _verdict(w1, "search", "2.7", "conversion", "final", "neutral")
    # cart 3.0: degraded only a non-critical KPI.
    _verdict(w1, "cart", "3.0", "conversion", "final", "neutral")
    _verdict(w1, "cart", "3.0", "sessions", "final", "degraded")
    for service in ("checkout", "payments", "search", "cart", "catalog"):
        w1.watermark.labels(service).set(1e9)  # catalog: samples, no judged release yet
    # After a rebalance the former owner of cart still exports its older release until scraped
    # away: the join on instance keeps each worker's series apart.
    w2 = Metrics()
    _verdict(w2, "cart", "2.9", "conversion", "final", "degraded")
    w2.watermark.labels("cart").set(1e9)
    cases = [
        ("checkout", "2.0", 1),
        ("checkout", "1.9", 0),  # superseded: no longer the release valueloop judged last
        ("payments", "5.1", 1),
        ("search", "2.7", 0),
        ("cart", "3.0", 0),
        ("cart", "2.9", 1),
        ("catalog", "1.0", 0),
        ("ghost", "1.0", None),  # valueloop has no data for the service: no value, never a pass
    ]
    tests = [
        {
            "expr": gates.render_argo(service, version),
            "eval_time": "5m",
            "exp_samples": [] if want is None else [{"labels": "{}", "value": want}],
        }
        for service, version, want in cases
    ]
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _input_series(w1, "w1") + _input_series(w2, "w2"),
                "promql_expr_test": tests,
            }
        ],
    }
    path = tmp_path / "gates.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = subprocess.run(
        [_promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_readme_shows_the_query_the_templates_run() -> None:
    readme = (gates.ROOT / "README.md").read_text()
    assert gates.render_argo("checkout", "1.4.2") in readme
