"""Checked-in JSON Schemas match the models, and every example payload is valid and decodes."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream_app import codec
from stream_app.codec import Rejected
from stream_app.core.types import KpiJudgement, VerdictRecord
from stream_app.events.impact import ImpactEvent
from stream_app.events.ledger import LedgerEvent
from stream_app.schemas import CONTRACTS, check_schemas, export_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = sorted((SCHEMAS / "examples").glob("*/*.json"))
ROLE_OF_CONTRACT = {
    "deployment-cdevent": "deployments",
    "flag-change": "deployments",
    "telemetry-sample": "telemetry",
    "workitem-stage": "workflow",
    "workflow-cdevent": "workflow",
    "incident-cdevent": "incidents",
}


def validator(contract: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{contract}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_checked_in_schemas_match_the_models() -> None:
    assert check_schemas(SCHEMAS) == [], "run `valueloop schemas export` and commit schemas/"


def test_export_is_deterministic_and_drift_is_reported(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in export_schemas(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in export_schemas(tmp_path / "b")}
    assert first == second and len(first) == len(CONTRACTS)
    assert all(b.endswith(b"}\n") for b in first.values())
    (tmp_path / "a" / "telemetry-sample.schema.json").write_text("{}\n")
    (tmp_path / "a" / "old.schema.json").write_text("{}\n")
    (tmp_path / "a" / "impact-verdict.schema.json").unlink()
    drift = check_schemas(tmp_path / "a")
    assert len(drift) == 3
    assert any("telemetry-sample" in d and "differs" in d for d in drift)
    assert any("old.schema.json" in d for d in drift)
    assert any("impact-verdict" in d and "missing" in d for d in drift)


def test_every_contract_has_examples() -> None:
    assert {p.parent.name for p in EXAMPLES} == set(CONTRACTS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_example_is_valid_and_decodes(path: Path) -> None:
    contract = path.parent.name
    validator(contract).validate(json.loads(path.read_text()))
    if contract == "impact-verdict":
        ImpactEvent.model_validate(orjson.loads(path.read_bytes()))
        return
    if contract == "ledger-entry":  # an output contract too: nothing decodes it as input
        LedgerEvent.model_validate(orjson.loads(path.read_bytes()))
        return
    role = ROLE_OF_CONTRACT[contract]
    event = codec.decode(role, path.read_bytes())  # type: ignore[arg-type]
    assert not isinstance(event, Rejected), event
    assert codec.role_of(event) == role


@pytest.mark.parametrize(
    ("contract", "payload"),
    [
        ("telemetry-sample", {"service": "c", "kpi": "k", "time": 1764064800123, "value": 1}),
        ("telemetry-sample", {"service": "c", "kpi": "k", "time": 1, "value": 1, "unit": "ms"}),
        ("telemetry-sample", {"service": "c", "kpi": "k", "time": 1, "value": True}),
        ("telemetry-sample", {"service": "c", "kpi": "k", "time": 1, "value": 1, "count": -1}),
    ],
)
def test_schema_and_decoder_reject_the_same_bad_samples(
    contract: str, payload: dict[str, object]
) -> None:
    assert not validator(contract).is_valid(payload)
    assert isinstance(codec.decode("telemetry", orjson.dumps(payload)), Rejected)


def test_flag_rollout_over_100_is_invalid_for_schema_and_decoder() -> None:
    doc = json.loads((SCHEMAS / "examples" / "flag-change" / "flag-rollout-0.4.json").read_text())
    doc["subject"]["content"]["rolloutPercent"] = 120
    assert not validator("flag-change").is_valid(doc)
    assert isinstance(codec.decode("deployments", orjson.dumps(doc)), Rejected)


def test_encoded_verdicts_match_the_impact_schema() -> None:
    rec = VerdictRecord(
        release_id="r",
        service="checkout",
        version="v1",
        release_time=1764064800.0,
        kpi="orders",
        critical=False,
        phase="interim",
        revision=1,
        baseline_window=(1764061200.0, 1764064800.0),
        post_window=(1764064800.0, 1764066600.0),
        judgement=KpiJudgement(
            kpi="orders",
            verdict="inconclusive",
            reason="thin",
            reason_code="thin-data",
            more_buckets_needed=12,
            p_value=float("nan"),
        ),
    )
    validator("impact-verdict").validate(orjson.loads(codec.encode_verdict(rec)))
