"""One rule names the service of every event (README "Service names"); the key fills the gaps."""

from __future__ import annotations

from typing import Any

import orjson

from stream_app import codec
from stream_app.codec import Rejected
from stream_app.events.model import Incident, Release, WorkflowEvent

PIPELINE_RUN: dict[str, Any] = {
    "context": {
        "version": "0.4.1",
        "id": "run-123-finished",
        "source": "/ci/pipelines",
        "type": "dev.cdevents.pipelinerun.finished.0.2.0",
        "timestamp": "2026-03-02T10:00:00Z",
    },
    "subject": {
        "id": "123",
        "source": "/ci/pipelines/123",
        "type": "pipelineRun",
        "content": {"pipelineName": "build", "outcome": "success"},
    },
}


def _ce(doc: dict[str, Any], **extra: str) -> bytes:
    ctx = doc["context"]
    attrs = {"specversion": "1.0", "id": ctx["id"], "source": ctx["source"], "type": ctx["type"]}
    return orjson.dumps({**attrs, **extra, "data": doc})


def test_a_pipelinerun_keyed_by_its_service_belongs_to_that_service() -> None:
    raw = orjson.dumps(PIPELINE_RUN)
    unkeyed = codec.decode("workflow", raw)
    assert isinstance(unkeyed, WorkflowEvent) and unkeyed.service == "123"  # subject.source
    keyed = codec.decode("workflow", raw, key=b"shop")
    assert isinstance(keyed, WorkflowEvent) and keyed.service == "shop"
    # The service decides the key the event is re-published under: the same partition as shop's.
    assert codec.key_of(keyed) == b"shop"


def test_the_cloudevents_partitionkey_stands_in_for_a_missing_key() -> None:
    structured = codec.decode("workflow", _ce(PIPELINE_RUN, partitionkey="shop"))
    assert isinstance(structured, WorkflowEvent) and structured.service == "shop"
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"run-123-finished"),
        ("ce_source", b"/ci/pipelines"),
        ("ce_type", b"dev.cdevents.pipelinerun.finished.0.2.0"),
        ("ce_partitionkey", b"shop"),
    ]
    binary = codec.decode("workflow", orjson.dumps(PIPELINE_RUN), headers)
    assert isinstance(binary, WorkflowEvent) and binary.service == "shop"
    # The Kafka key itself wins over the attribute (the binding maps one to the other).
    both = codec.decode("workflow", _ce(PIPELINE_RUN, partitionkey="x"), key=b"shop")
    assert isinstance(both, WorkflowEvent) and both.service == "shop"


def test_what_the_event_says_comes_before_the_key() -> None:
    doc = {**PIPELINE_RUN, "customData": {"valueloop": {"service": "payments"}}}
    ev = codec.decode("workflow", orjson.dumps(doc), key=b"shop")
    assert isinstance(ev, WorkflowEvent) and ev.service == "payments"
    deployed = {
        "context": {**PIPELINE_RUN["context"], "type": "dev.cdevents.service.deployed.0.2.0"},
        "subject": {
            "id": "service/checkout",
            "type": "service",
            "content": {"environment": {"id": "production"}, "artifactId": "pkg:oci/c@v1"},
        },
    }
    r = codec.decode("deployments", orjson.dumps(deployed), key=b"shop")
    assert isinstance(r, Release) and r.service == "checkout"  # a service subject names it


def test_the_key_comes_before_purl_names_and_repositories() -> None:
    artifact = {
        "context": {
            **PIPELINE_RUN["context"],
            "type": "dev.cdevents.artifact.published.0.2.0",
        },
        "subject": {"id": "pkg:oci/shop-image@v2", "type": "artifact", "content": {}},
    }
    raw = orjson.dumps(artifact)
    plain = codec.decode("workflow", raw)
    assert isinstance(plain, WorkflowEvent) and plain.service == "shop-image"
    keyed = codec.decode("workflow", raw, key=b"shop")
    assert isinstance(keyed, WorkflowEvent) and keyed.service == "shop"


def test_an_incident_without_a_service_is_named_by_its_key_then_its_artifact() -> None:
    incident = {
        "context": {
            **PIPELINE_RUN["context"],
            "type": "dev.cdevents.incident.detected.0.2.0",
        },
        "subject": {
            "id": "INC-1",
            "type": "incident",
            "content": {"environment": {"id": "production"}, "artifactId": "pkg:oci/shop@v1.0.0"},
        },
    }
    raw = orjson.dumps(incident)
    by_purl = codec.decode("incidents", raw)
    assert isinstance(by_purl, Incident) and by_purl.service == "shop"
    by_key = codec.decode("incidents", raw, key=b"shop-eu")
    assert isinstance(by_key, Incident) and by_key.service == "shop-eu"
    del incident["subject"]["content"]["artifactId"]
    nothing = codec.decode("incidents", orjson.dumps(incident))
    assert isinstance(nothing, Rejected) and nothing.reason == "schema-invalid"
    assert "message key" in nothing.detail


def test_unusable_keys_are_ignored_not_fatal() -> None:
    raw = orjson.dumps(PIPELINE_RUN)
    for key in (b"", b"\xff\xfe", b"x" * 129, None):
        ev = codec.decode("workflow", raw, key=key)
        assert isinstance(ev, WorkflowEvent) and ev.service == "123", key
