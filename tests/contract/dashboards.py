"""The Grafana dashboards' and the rules' PromQL, made concrete enough to evaluate or to inspect."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"

# What each Grafana variable becomes outside Grafana: "All" for the label variables (the
# dashboards' allValue is ".+"), fixed windows for the interval macros ($__rate_interval must span
# at least 2 scrapes).
VARIABLE_VALUES: dict[str, str] = {
    "product": ".+",
    "service": ".+",
    "kpi": ".+",
    "value_stream": ".+",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def concrete(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana template variables (``$service``, ``${kpi}``, ``$__rate_interval``).

    Args:
        expr: a dashboard query.
        values: variable name -> replacement; defaults to ``VARIABLE_VALUES``.

    Returns:
        The query as Prometheus would receive it with every variable set to "All".

    Raises:
        KeyError: the query uses a variable without a known value.
    """
    table = VARIABLE_VALUES if values is None else values

    def sub(m: re.Match[str]) -> str:
        return table[m.group(1) or m.group(2) or m.group(3)]

    return _VARIABLE.sub(sub, expr)


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON file, by file stem (``release-impact``, ``value-stream``, ``dora``)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    # Rows may nest panels when collapsed; flatten them.
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def raw_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, query) for every panel target and Prometheus annotation, variables unreplaced.

    Annotations appear with the title ``annotation: <name>``.
    """
    out: list[tuple[str, str]] = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((panel["title"], target["expr"]))
    for ann in dashboard.get("annotations", {}).get("list", []):
        expr = ann.get("expr") or ann.get("target", {}).get("expr")
        if expr:
            out.append((f"annotation: {ann['name']}", expr))
    return out


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, concrete query) for every query of every shipped dashboard.

    The queries have their template variables replaced (see ``concrete``), so they can be sent as
    they are to Prometheus' ``/api/v1/query``; each should return data once the worker has seen the
    demo.
    """
    return [
        (name, title, concrete(expr))
        for name, dash in load_dashboards().items()
        for title, expr in raw_queries(dash)
    ]


def rule_expressions() -> list[tuple[str, str]]:
    """(alert or record name, expression) for every rule in deploy/prometheus/rules."""
    out: list[tuple[str, str]] = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


def recorded_names() -> set[str]:
    """Series names the recording rules produce."""
    names: set[str] = set()
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(r["record"] for r in group["rules"] if "record" in r)
    return names


_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_FUNCTION = re.compile(r"\b[a-zA-Z_]\w*\s*\(")
_IDENT = re.compile(r"(?<![\w.])[a-zA-Z_:][\w:]*")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    }
)
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),)?\s*\w+\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression (or a Grafana ``label_values`` query) selects.

    Strips strings, label matchers, ranges, grouping clauses, function names and keywords; what
    remains are metric (or recording rule) names. Good enough for the queries shipped here.
    """
    m = _LABEL_VALUES.match(expr)
    if m:
        expr = m.group(1) or ""
    expr = _STRING.sub(" ", expr)
    expr = _MATCHERS.sub(" ", expr)
    expr = _RANGE.sub(" ", expr)
    expr = _GROUPING.sub(" ", expr)
    expr = _FUNCTION.sub(" ", expr)
    return {name for name in _IDENT.findall(expr) if name not in _KEYWORDS}


_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"""(\w+)\s*(?:=~|!~|!=|=)\s*(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, label names matched) for every ``name{...}`` selector of an expression."""
    return [
        (m.group(1), {lm.group(1) for lm in _MATCHER.finditer(m.group(2))})
        for m in _SELECTOR.finditer(expr)
    ]
