"""The CDEvents spec's example payloads decode; what valueloop encodes is valid per the spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from stream_app import codec
from stream_app.codec import Rejected
from stream_app.events import EVENT_TYPES, event_type
from stream_app.events.model import Incident, IncidentAction, Release, ReleaseKind, WorkflowEvent
from stream_app.events.workflow import _MAP

DATA = Path(__file__).parent / "data" / "cdevents"
REPO = Path(__file__).resolve().parents[2]
SPECS = ["v0.3.0", "v0.4.0", "v0.4.1", "v0.5.0", "v0.5.1"]
# v0.5.0's pipelinerun.finished and testsuiterun.finished schemas require context.version, which
# 0.5 no longer allows (fixed in v0.5.1, cdevents/spec 8e09a2d): the 0.5 line is checked with 0.5.1.
SCHEMA_SPECS = ["v0.3.0", "v0.4.1", "v0.5.1"]
EXAMPLES = sorted(DATA.glob("v*/examples/*.json"))
CONTRACT_OF_ROLE = {
    "deployments": "deployment-cdevent",
    "workflow": "workflow-cdevent",
    "incidents": "incident-cdevent",
}
T = 1764064800.0
CHAIN = "4c8cb7dd-3448-41de-8768-eec704e2829b"  # context.chainId of the spec's 0.4/0.5 examples
LINKED = "5328c37f-bb7e-4bb7-84ea-9f5f85e4a7ce"  # the context id their links point to
RELEASE_KINDS: tuple[ReleaseKind, ...] = ("deployed", "upgraded", "rolledback")
INCIDENT_ACTIONS: tuple[IncidentAction, ...] = ("detected", "reported", "resolved")


def _id(path: Path) -> str:
    return f"{path.parts[-3]}/{path.stem}"


def _forms(raw: bytes) -> list[tuple[bytes, list[tuple[str, bytes | None]] | None]]:
    doc = orjson.loads(raw)
    ctx = doc["context"]
    attrs = {"specversion": "1.0", "id": ctx["id"], "source": ctx["source"], "type": ctx["type"]}
    ce = orjson.dumps(
        {**attrs, "time": ctx["timestamp"], "datacontenttype": "application/json", "data": doc}
    )
    headers: list[tuple[str, bytes | None]] = [(f"ce_{k}", v.encode()) for k, v in attrs.items()]
    return [(raw, None), (ce, None), (raw, headers)]


def test_examples_cover_every_standard_event_type_we_read() -> None:
    standard = {name for name, e in EVENT_TYPES.items() if e.namespace == "dev.cdevents"}
    for spec in SPECS:
        names = {
            event_type(json.loads(p.read_text())["context"]["type"]).name
            for p in EXAMPLES
            if spec in p.parts
        }
        assert names == standard, spec


@pytest.mark.parametrize("path", EXAMPLES, ids=_id)
def test_spec_example_is_accepted_in_all_three_forms(path: Path) -> None:
    raw = path.read_bytes()
    role = event_type(json.loads(raw)["context"]["type"]).role
    decoded = [codec.decode(role, value, headers) for value, headers in _forms(raw)]
    assert not isinstance(decoded[0], Rejected), decoded[0]
    assert decoded[1] == decoded[0] == decoded[2]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("kind", RELEASE_KINDS)
def test_spec_service_examples_decode_to_their_release(spec: str, kind: ReleaseKind) -> None:
    r = codec.decode(
        "deployments", (DATA / spec / "examples" / f"service_{kind}.json").read_bytes()
    )
    assert r == Release(
        id="271069a8-fc18-44f1-b38f-9d70a1695819",
        service="mySubject123",
        version="sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427",
        time=1679322425.315384,
        kind=kind,
        environment="test123",
        # 0.3 has no chain; 0.4.0 calls it chain_id, later versions chainId (and add links).
        chain_id=None if spec == "v0.3.0" else CHAIN,
        links=(LINKED,) if spec not in ("v0.3.0", "v0.4.0") else (),
    )


@pytest.mark.parametrize("path", sorted(DATA.glob("v0.4.0/examples/*.json")), ids=lambda p: p.stem)
def test_v040_examples_with_chain_id_are_accepted(path: Path) -> None:
    """CDEvents 0.4.0 producers name the chain ``chain_id`` (0.4.1 renamed it ``chainId``)."""
    raw = path.read_bytes()
    assert b'"chain_id"' in raw
    ev = codec.decode_any(raw)
    assert not isinstance(ev, Rejected), ev
    if not isinstance(ev, Incident):  # incidents do not carry the chain
        assert ev.chain_id == CHAIN


def test_chain_id_and_chainid_must_agree() -> None:
    doc = json.loads((DATA / "v0.4.1" / "examples" / "service_deployed.json").read_text())
    doc["context"]["chain_id"] = CHAIN  # both names, same chain: fine
    assert isinstance(codec.decode("deployments", orjson.dumps(doc)), Release)
    doc["context"]["chain_id"] = "another-chain"
    r = codec.decode("deployments", orjson.dumps(doc))
    assert isinstance(r, Rejected) and r.reason == "schema-invalid"
    assert "different chains" in r.detail


@pytest.mark.parametrize("spec", SPECS)
def test_spec_incident_example_names_service_environment_and_artifact(spec: str) -> None:
    i = codec.decode(
        "incidents", (DATA / spec / "examples" / "incident_detected.json").read_bytes()
    )
    assert isinstance(i, Incident)
    assert (i.incident_id, i.service, i.environment, i.action) == (
        "incident-123",
        "myApp",
        "prod1",
        "detected",
    )
    assert i.deployment_id is not None and i.deployment_id.startswith("pkg:oci/myapp@")


@pytest.mark.parametrize("path", EXAMPLES, ids=_id)
def test_spec_examples_validate_against_our_exported_schemas(path: Path) -> None:
    doc = json.loads(path.read_text())
    contract = CONTRACT_OF_ROLE[event_type(doc["context"]["type"]).role]
    schema = json.loads((REPO / "schemas" / f"{contract}.schema.json").read_text())
    Draft202012Validator(schema).validate(doc)


def _official_validator(spec: str, type_name: str) -> Draft202012Validator:
    schemas = [json.loads(p.read_text()) for p in (DATA / spec / "schemas").rglob("*.json")]
    registry: Registry[Any] = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas
    )
    file = type_name.replace(".", "")
    return Draft202012Validator(
        json.loads((DATA / spec / "schemas" / f"{file}.json").read_text()), registry=registry
    )


def _one_of_each() -> list[Release | WorkflowEvent | Incident]:
    events: list[Release | WorkflowEvent | Incident] = [
        Release("r", "checkout", "v1.2.3", T, kind, commits=("abc",), scope={"region": "eu"})
        for kind in RELEASE_KINDS
    ]
    events += [
        Incident("i", "INC-1", T, "checkout", action, deployment_id="r", description="slow")
        for action in INCIDENT_ACTIONS
    ]
    for name, (source_type, action, outcome) in _MAP.items():
        if name in ("pipelinerun.finished", "testsuiterun.finished"):
            outcome = "failure"
        events.append(
            WorkflowEvent(
                "w",
                T,
                "checkout",
                "item-1",
                "feature",
                "review",
                action,
                None,
                source_type,
                ("abc",),
                outcome,
            )
        )
    return events


@pytest.mark.parametrize("spec", SCHEMA_SPECS)
def test_encoded_events_are_valid_cdevents_of_that_spec_version(spec: str) -> None:
    for event in _one_of_each():
        doc = orjson.loads(codec.encode(event, spec_version=spec[1:]))
        name = event_type(doc["context"]["type"]).name
        errors = [e.message for e in _official_validator(spec, name).iter_errors(doc)]
        assert errors == [], (spec, name, errors)
