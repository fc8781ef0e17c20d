"""The rollout-gate templates in deploy/rollouts, rendered and judged the way each controller does.

Shared by the contract tests (CRD schemas, promtool) and the stack end-to-end test (real
Prometheus). Each ``render_*`` mirrors its controller's placeholder substitution, each ``*_outcome``
its reading of the Prometheus answer (sources in the docstrings): the tests judge what a cluster
would do.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLLOUTS = ROOT / "deploy" / "rollouts"


def docs(name: str) -> list[dict[str, Any]]:
    """The YAML documents of deploy/rollouts/<name>."""
    return [d for d in yaml.safe_load_all((ROLLOUTS / name).read_text()) if d]


def one(name: str, kind: str) -> dict[str, Any]:
    """The single document of ``kind`` in deploy/rollouts/<name>."""
    [doc] = [d for d in docs(name) if d["kind"] == kind]
    return doc


def argo_metric() -> dict[str, Any]:
    """The AnalysisTemplate's one metric."""
    [metric] = one("argo-rollouts.yaml", "AnalysisTemplate")["spec"]["metrics"]
    return metric


def render_argo(service: str, version: str) -> str:
    """The Argo query with ``{{args.NAME}}`` replaced (plain substitution, template defaults)."""
    template = one("argo-rollouts.yaml", "AnalysisTemplate")
    args = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    args.update(service=service, version=version)
    query: str = argo_metric()["provider"]["prometheus"]["query"]

    def arg(m: re.Match[str]) -> str:
        value = args[m.group(1)]
        assert value is not None, f"arg {m.group(1)} has no value"
        return value

    out = re.sub(r"\{\{args\.([\w-]+)\}\}", arg, query)
    assert "{{" not in out, out
    return out.strip()


def render_flagger(variables: dict[str, str]) -> str:
    """The Flagger query rendered with the Canary metric's ``templateVariables``.

    Flagger renders with Go's text/template and ``missingkey=error``
    (pkg/metrics/observers/render.go): a variable the Canary does not set is an error, here a
    KeyError.
    """
    query: str = one("flagger.yaml", "MetricTemplate")["spec"]["query"]
    out = re.sub(r"\{\{\s*variables\.(\w+)\s*\}\}", lambda m: variables[m.group(1)], query)
    assert "{{" not in out, out
    return out.strip()


def render_keptn(args: dict[str, str]) -> str:
    """The Keptn query rendered with the Analysis ``args``, stripped of surrounding whitespace.

    Keptn executes the query as a Go template over the args map without ``missingkey``
    (controllers/analysis/provider_selector.go): a missing arg renders as ``<no value>`` and is
    false in an ``if``. The template's one ``if and .service .version``/``else`` is evaluated here.
    """
    query: str = one("keptn.yaml", "AnalysisValueTemplate")["spec"]["query"]
    m = re.fullmatch(
        r"\s*\{\{ if and \.service \.version \}\}(.*)\{\{ else \}\}(.*)\{\{ end \}\}\s*",
        query,
        re.DOTALL,
    )
    assert m is not None, query
    body = m.group(1) if args.get("service") and args.get("version") else m.group(2)
    out = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda v: args.get(v.group(1), "<no value>"), body)
    assert "{{" not in out, out
    return out.strip()


_OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*result\[(\d+)\]\s*(==|!=|<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")


def eval_condition(condition: str, result: list[float]) -> bool:
    """Evaluate an Argo condition of the form ``result[i] <op> <number>`` (no other form).

    Raises:
        IndexError: ``result`` has no element i (Argo's expr errors so on an empty vector).
    """
    m = _CONDITION.match(condition)
    if m is None:
        raise NotImplementedError(f"condition outside the supported form: {condition!r}")
    return _OPS[m.group(2)](result[int(m.group(1))], float(m.group(3)))


def argo_phase(metric: dict[str, Any], result: list[float]) -> str:
    """A measurement's phase as Argo's ``evaluate.EvaluateResult`` (utils/evaluate, v1.9.1) sets it.

    ``result`` is what the Prometheus provider passes for a vector: the sample values in order.
    """
    success_expr = metric.get("successCondition", "")
    failure_expr = metric.get("failureCondition", "")
    try:
        success = eval_condition(success_expr, result) if success_expr else False
        failure = eval_condition(failure_expr, result) if failure_expr else False
    except IndexError:
        return "Error"
    if not success_expr and not failure_expr:
        return "Successful"
    if success_expr and not failure_expr:
        failure = not success
    elif failure_expr and not success_expr:
        success = not failure
    if failure:
        return "Failed"
    if not success:
        return "Inconclusive"
    return "Successful"


def flagger_outcome(threshold_max: float, values: list[float]) -> str:
    """A Flagger check of an instant vector (providers/prometheus.go, scheduler_metrics.go).

    The provider keeps the last sample's value; none (or NaN) is ``ErrNoValuesFound`` and halts.
    """
    if not values or values[-1] != values[-1]:
        return "halt: no values found"
    return "halt: above max" if values[-1] > threshold_max else "pass"


def keptn_value(matrix: list[dict[str, Any]]) -> float | str:
    """The value Keptn's Prometheus provider takes from a range query (FetchAnalysisValue, v2.1.0).

    Exactly one series is required; its first point is the value.
    """
    if not matrix:
        return "error: no values in query result"
    if len(matrix) > 1:
        return "error: too many values in query result"
    return float(matrix[0]["values"][0][1])


def keptn_outcome(value: float | str) -> str:
    """Fail or pass of the AnalysisDefinition's objective for ``value`` (operator_evaluator.go)."""
    if isinstance(value, str):
        return value
    [objective] = one("keptn.yaml", "AnalysisDefinition")["spec"]["objectives"]
    [(op, bound)] = objective["target"]["failure"].items()
    ops = {
        "equalTo": operator.eq,
        "lessThan": operator.lt,
        "lessThanOrEqual": operator.le,
        "greaterThan": operator.gt,
        "greaterThanOrEqual": operator.ge,
    }
    return "fail" if ops[op](value, float(bound["fixedValue"])) else "pass"
