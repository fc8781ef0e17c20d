"""JSON Schema export of the event contracts, generated from the pydantic models; drift check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stream_app.events.deployments import DeploymentCDEvent, FlagChangeEvent
from stream_app.events.impact import ImpactEvent
from stream_app.events.incidents import IncidentCDEvent
from stream_app.events.ledger import LedgerEvent
from stream_app.events.telemetry import TelemetrySample
from stream_app.events.workflow import WorkflowCDEvent, WorkItemEvent

# Contract name -> model. Names are file names under schemas/ and examples/: keep them stable.
CONTRACTS: dict[str, type[BaseModel]] = {
    "deployment-cdevent": DeploymentCDEvent,
    "flag-change": FlagChangeEvent,
    "telemetry-sample": TelemetrySample,
    "workitem-stage": WorkItemEvent,
    "workflow-cdevent": WorkflowCDEvent,
    "incident-cdevent": IncidentCDEvent,
    "impact-verdict": ImpactEvent,
    "ledger-entry": LedgerEvent,
}
SUFFIX = ".schema.json"


def schema_of(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one contract."""
    schema = CONTRACTS[name].model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render(name: str) -> str:
    """The exact file text of a contract's schema: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(schema_of(name), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_schemas(out_dir: Path) -> list[Path]:
    """Write ``<contract>.schema.json`` for every contract into ``out_dir``.

    Args:
        out_dir: target directory, created when missing.

    Returns:
        The written paths, in contract-name order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in sorted(CONTRACTS):
        path = out_dir / f"{name}{SUFFIX}"
        path.write_text(render(name), encoding="utf-8")
        paths.append(path)
    return paths


def check_schemas(schema_dir: Path) -> list[str]:
    """Where the schema files in ``schema_dir`` differ from the models (empty: no drift).

    Returns:
        One line per missing, outdated or unexpected ``*.schema.json`` file.
    """
    drift = []
    for name in sorted(CONTRACTS):
        path = schema_dir / f"{name}{SUFFIX}"
        if not path.is_file():
            drift.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != render(name):
            drift.append(f"{path}: differs from the model {CONTRACTS[name].__name__}")
    for path in sorted(schema_dir.glob(f"*{SUFFIX}")):
        if path.name.removesuffix(SUFFIX) not in CONTRACTS:
            drift.append(f"{path}: no such contract")
    return drift
