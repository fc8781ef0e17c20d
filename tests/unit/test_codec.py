"""Codec: bytes <-> events, the three CloudEvents forms, rejections by reason, and round trips."""

from __future__ import annotations

import copy
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stream_app import codec
from stream_app.codec import Rejected, decode, decode_any, encode, encode_binary, encode_structured
from stream_app.core.types import KpiJudgement, VerdictRecord
from stream_app.errors import DecodeError
from stream_app.events import EVENT_TYPES, ROLES, timestamp_seconds
from stream_app.events.deployments import flag_version
from stream_app.events.impact import ImpactEvent
from stream_app.events.model import (
    Incident,
    ItemType,
    KpiSample,
    Release,
    ReleaseKind,
    WorkflowEvent,
)
from stream_app.events.telemetry import TelemetrySample, sample_from_obj
from stream_app.events.workflow import _MAP

T0 = "2025-11-25T10:00:00Z"
T0_S = 1764064800.0
RELEASE_KINDS: tuple[ReleaseKind, ...] = ("deployed", "upgraded", "rolledback")
ITEM_TYPES: tuple[ItemType | None, ...] = (None, "feature", "defect", "risk", "debt")
PROPS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def deployed(**over: Any) -> dict[str, Any]:
    """A spec-0.4 service.deployed CDEvent; keyword args replace top-level parts."""
    doc: dict[str, Any] = {
        "context": {
            "version": "0.4.1",
            "id": "rel-1",
            "source": "/argocd",
            "type": "dev.cdevents.service.deployed.0.2.0",
            "timestamp": T0,
        },
        "subject": {
            "id": "service/checkout",
            "type": "service",
            "content": {
                "environment": {"id": "production"},
                "artifactId": "pkg:oci/checkout@v1.2.3",
            },
        },
    }
    doc.update(over)
    return doc


def js(obj: Any) -> bytes:
    return orjson.dumps(obj)


def structured(doc: dict[str, Any], **over: Any) -> bytes:
    ctx = doc["context"]
    ce = {
        "specversion": "1.0",
        "id": ctx["id"],
        "source": ctx["source"],
        "type": ctx["type"],
        "time": ctx["timestamp"],
        "datacontenttype": "application/json",
        "data": doc,
    }
    ce.update(over)
    return js(ce)


def binary_headers(doc: dict[str, Any], **over: str) -> list[tuple[str, bytes | None]]:
    ctx = doc["context"]
    h = {"specversion": "1.0", "id": ctx["id"], "source": ctx["source"], "type": ctx["type"]}
    h.update(over)
    return [(f"ce_{k}", v.encode()) for k, v in h.items()] + [("content-type", b"application/json")]


def rejected(result: object, reason: str) -> Rejected:
    assert isinstance(result, Rejected), result
    assert result.reason == reason, result
    assert result.reason in codec.REASONS
    return result


# ---------------------------------------------------------------------------- deployments
def test_plain_structured_and_binary_forms_decode_to_the_same_release() -> None:
    doc = deployed(customData={"valueloop": {"commits": ["abc1234"], "changeIds": ["PR-7"]}})
    plain = decode("deployments", js(doc))
    assert plain == Release(
        id="rel-1",
        service="checkout",
        version="v1.2.3",
        time=T0_S,
        kind="deployed",
        environment="production",
        commits=("abc1234",),
        change_ids=("PR-7",),
    )
    assert decode("deployments", structured(doc)) == plain
    assert decode("deployments", js(doc), binary_headers(doc)) == plain


@pytest.mark.parametrize(
    ("subject_id", "artifact", "custom", "service", "version"),
    [
        (
            "service/checkout",
            "pkg:oci/checkout@v1.2.3?repository_url=ghcr.io/acme",
            {},
            "checkout",
            "v1.2.3",
        ),
        (
            "daemonset/ns/checkout",
            "pkg:oci/x@sha256%3A0b31b1c02ff4",
            {},
            "checkout",
            "sha256:0b31b1c02ff4",
        ),
        (
            "checkout",
            "0b31b1c02ff458ad9b7b81cbdf8f028b",
            {},
            "checkout",
            "0b31b1c02ff458ad9b7b81cbdf8f028b",
        ),
        (
            "service/x",
            "pkg:oci/x@v1",
            {"service": "payments", "version": "2025.11.1"},
            "payments",
            "2025.11.1",
        ),
    ],
)
def test_service_and_version_come_from_custom_data_else_subject_id_and_purl(
    subject_id: str, artifact: str, custom: dict[str, str], service: str, version: str
) -> None:
    doc = deployed()
    doc["subject"]["id"] = subject_id
    doc["subject"]["content"]["artifactId"] = artifact
    if custom:
        doc["customData"] = {"valueloop": custom, "otherTool": {"kept": "out of the way"}}
    r = decode("deployments", js(doc))
    assert isinstance(r, Release)
    assert (r.service, r.version) == (service, version)


def test_a_release_without_a_derivable_version_is_rejected_with_the_field_named() -> None:
    doc = deployed()
    doc["subject"]["content"]["artifactId"] = "six-1.14.0-py2.py3-none-any.whl"
    r = rejected(decode("deployments", js(doc)), "schema-invalid")
    assert "artifactId" in r.detail and "customData.valueloop.version" in r.detail


def test_scope_and_kind_of_a_canary_upgrade() -> None:
    doc = deployed(customData={"valueloop": {"scope": {"region": "eu"}}})
    doc["context"]["type"] = "dev.cdevents.service.upgraded.0.2.0"
    r = decode("deployments", js(doc))
    assert isinstance(r, Release)
    assert (r.kind, r.scope) == ("upgraded", {"region": "eu"})


@pytest.mark.parametrize(
    ("key", "spec", "type_version", "with_subject_type"),
    [
        ("version", "0.3.0", "0.1.1", True),
        ("version", "0.4.0", "0.2.0", True),
        ("specversion", "0.5.0", "0.3.0", False),
        ("specversion", "0.5.1", "0.3.0", False),
    ],
)
def test_every_supported_spec_version_is_accepted(
    key: str, spec: str, type_version: str, with_subject_type: bool
) -> None:
    doc = deployed()
    del doc["context"]["version"]
    doc["context"][key] = spec
    doc["context"]["type"] = f"dev.cdevents.service.rolledback.{type_version}"
    if not with_subject_type:
        del doc["subject"]["type"]
    r = decode("deployments", js(doc))
    assert isinstance(r, Release) and r.kind == "rolledback"


@pytest.mark.parametrize("spec", ["0.2.0", "0.6.0", "1.0", "", 3])
def test_unsupported_cdevents_spec_versions_are_rejected(spec: object) -> None:
    doc = deployed()
    doc["context"]["version"] = spec
    r = rejected(decode("deployments", js(doc)), "unknown-specversion")
    assert "0.3.x" in r.detail


def test_both_spec_version_keys_at_once_are_rejected() -> None:
    doc = deployed()
    doc["context"]["specversion"] = "0.5.0"
    r = rejected(decode("deployments", js(doc)), "schema-invalid")
    assert "exactly one of context.version" in r.detail


@pytest.mark.parametrize(
    "type_name",
    [
        "dev.cdevents.service.deployed.0.4.0",  # no spec defines it
        "dev.cdevents.change.created.0.2.0",  # change.created jumped 0.1 -> 0.3
        "dev.cdevents.taskrun.started.0.2.0",  # a CDEvent we do not read
        "dev.cdeventsx.other-flag.changed.0.1.0",
        "com.example.deployed",
    ],
)
def test_types_we_do_not_read_are_unknown_type(type_name: str) -> None:
    doc = deployed()
    doc["context"]["type"] = type_name
    rejected(decode("deployments", js(doc)), "unknown-type")


def test_validation_detail_names_the_field_path_and_the_problem() -> None:
    doc = deployed()
    del doc["subject"]["content"]["environment"]
    doc["context"]["timestamp"] = "yesterday"
    r = rejected(decode("deployments", js(doc)), "schema-invalid")
    assert "subject.content.environment: Field required" in r.detail
    assert "context.timestamp:" in r.detail


def test_unknown_envelope_fields_and_a_wrong_subject_type_are_rejected() -> None:
    rejected(decode("deployments", js(deployed(extra=1))), "schema-invalid")
    doc = deployed()
    doc["subject"]["type"] = "build"
    rejected(decode("deployments", js(doc)), "schema-invalid")


# ---------------------------------------------------------------------------- CloudEvents envelope
def test_cloudevents_specversion_other_than_1_0_is_rejected_in_both_modes() -> None:
    doc = deployed()
    rejected(decode("deployments", structured(doc, specversion="0.3")), "unknown-specversion")
    rejected(
        decode("deployments", js(doc), binary_headers(doc, specversion="0.3")),
        "unknown-specversion",
    )


def test_cloudevent_attributes_must_agree_with_the_cdevent() -> None:
    doc = deployed()
    rejected(decode("deployments", structured(doc, id="other")), "envelope-mismatch")
    other_type = "dev.cdevents.service.upgraded.0.2.0"
    rejected(
        decode("deployments", js(doc), binary_headers(doc, type=other_type)), "envelope-mismatch"
    )


def test_malformed_cloudevents_are_schema_invalid() -> None:
    doc = deployed()
    headers = [h for h in binary_headers(doc) if h[0] != "ce_type"]
    assert "ce_type" in rejected(decode("deployments", js(doc), headers), "schema-invalid").detail
    rejected(decode("deployments", structured(doc, data="not an object")), "schema-invalid")
    base64 = orjson.loads(structured(doc))
    base64["data_base64"] = base64.pop("data")
    rejected(decode("deployments", js(base64)), "schema-invalid")
    xml = [*binary_headers(doc)[:-1], ("content-type", b"application/xml")]
    rejected(decode("deployments", js(doc), xml), "schema-invalid")


def test_non_cloudevents_headers_do_not_switch_to_binary_mode() -> None:
    doc = deployed()
    assert isinstance(
        decode("deployments", js(doc), [("traceparent", b"00-abc"), ("x", None)]), Release
    )


# ---------------------------------------------------------------------------- bytes rejections
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\xff\xfe{}", "invalid-utf8"),
        (b"{not json", "not-json"),
        (b'{"service": "a", "kpi": "b", "time": 1, "value": NaN}', "non-finite"),
        (b'{"service": "a", "kpi": "b", "time": 1, "value": 1e400}', "non-finite"),
        (b"[1, 2]", "schema-invalid"),
    ],
)
def test_bad_bytes_are_rejected_by_reason(value: bytes | None, reason: str) -> None:
    rejected(decode("telemetry", value), reason)


def test_oversized_messages_are_rejected_before_parsing() -> None:
    value = js({"service": "checkout", "kpi": "orders", "time": T0_S, "value": 1.0})
    assert isinstance(decode("telemetry", value, max_bytes=len(value)), KpiSample)
    r = rejected(decode("telemetry", value, max_bytes=len(value) - 1), "oversized")
    assert str(len(value)) in r.detail


def test_non_utf8_cloudevents_header_is_rejected() -> None:
    doc = deployed()
    headers = [*binary_headers(doc), ("ce_subject", b"\xff")]
    rejected(decode("deployments", js(doc), headers), "invalid-utf8")


# ---------------------------------------------------------------------------- wrong topic
def test_events_on_the_wrong_topic_are_rejected_as_wrong_topic() -> None:
    doc = deployed()
    sample = js({"service": "checkout", "kpi": "orders", "time": T0_S, "value": 1.0})
    assert "deployments topic" in rejected(decode("telemetry", js(doc)), "wrong-topic").detail
    rejected(decode("telemetry", structured(doc)), "wrong-topic")
    rejected(decode("telemetry", js(doc), binary_headers(doc)), "wrong-topic")
    rejected(decode("deployments", sample), "wrong-topic")
    rejected(decode("workflow", js(doc)), "wrong-topic")
    rejected(decode("incidents", js(doc)), "wrong-topic")


def test_non_cdevent_object_on_a_cdevents_topic_is_schema_invalid() -> None:
    r = rejected(decode("incidents", js({"hello": "world"})), "schema-invalid")
    assert "expected a CDEvent" in r.detail


# ---------------------------------------------------------------------------- flags
def flag_doc(pct: object = 25, **content: Any) -> dict[str, Any]:
    return {
        "context": {
            "specversion": "0.5.0",
            "id": "flag-1",
            "source": "/flagd",
            "type": "dev.cdeventsx.valueloop-flag.changed.0.1.0",
            "timestamp": T0,
        },
        "subject": {
            "id": "new-checkout",
            "content": {
                "flagKey": "new-checkout",
                "service": "checkout",
                "variation": "on",
                "rolloutPercent": pct,
                **content,
            },
        },
    }


def test_a_flag_change_is_a_release_of_kind_flag() -> None:
    r = decode("deployments", js(flag_doc(12.5)))
    assert r == Release(
        id="flag-1",
        service="checkout",
        version="new-checkout=on@12.5%",
        time=T0_S,
        kind="flag",
        flag_key="new-checkout",
        rollout_percent=12.5,
    )
    assert flag_version("new-checkout", "on", 100.0) == "new-checkout=on@100%"


@pytest.mark.parametrize("pct", [-1, 100.5, "50", True, None])
def test_flag_rollout_must_be_a_percentage(pct: object) -> None:
    r = rejected(decode("deployments", js(flag_doc(pct))), "schema-invalid")
    assert "subject.content.rolloutPercent" in r.detail


def test_flag_changes_belong_on_the_deployments_topic() -> None:
    rejected(decode("workflow", js(flag_doc())), "wrong-topic")


# ---------------------------------------------------------------------------- workflow
def cdevent(
    type_name: str, subject: dict[str, Any], custom: dict[str, Any] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "context": {
            "version": "0.4.1",
            "id": "ev-1",
            "source": "/ci/tool",
            "type": type_name,
            "timestamp": T0,
        },
        "subject": subject,
    }
    if custom is not None:
        doc["customData"] = {"valueloop": custom}
    return doc


def test_change_merged_maps_to_a_merge_in_review_with_commits_from_custom_data() -> None:
    doc = cdevent(
        "dev.cdevents.change.merged.0.2.0",
        {"id": "pr-9", "type": "change", "content": {"repository": {"id": "acme/checkout"}}},
        {"commits": ["abc1234"], "itemType": "feature"},
    )
    assert decode("workflow", js(doc)) == WorkflowEvent(
        id="ev-1",
        time=T0_S,
        service="checkout",
        item_id="pr-9",
        item_type="feature",
        stage="review",
        action="merged",
        state=None,
        source_type="change",
        commits=("abc1234",),
    )


def test_pipeline_runs_take_their_stage_from_the_pipeline_name_and_state_from_the_action() -> None:
    queued = cdevent(
        "dev.cdevents.pipelinerun.queued.0.2.0",
        {"id": "run-1", "content": {"pipelineName": "deploy-prod"}},
        {"service": "checkout"},
    )
    r = decode("workflow", js(queued))
    assert isinstance(r, WorkflowEvent)
    assert (r.source_type, r.stage, r.action, r.state) == (
        "pipelinerun",
        "deploy-prod",
        "queued",
        "waiting",
    )


def test_test_suite_outcomes_are_normalised_to_spec_0_5_words() -> None:
    doc = cdevent(
        "dev.cdevents.testsuiterun.finished.0.2.0",
        {"id": "ts-1", "content": {"outcome": "pass", "environment": {"id": "ci"}}},
        {"service": "checkout"},
    )
    r = decode("workflow", js(doc))
    assert isinstance(r, WorkflowEvent) and r.outcome == "success"


def test_custom_data_overrides_stage_and_an_explicit_null_state_clears_the_default() -> None:
    doc = cdevent(
        "dev.cdevents.build.started.0.2.0",
        {"id": "b-1", "content": {}},
        {"service": "checkout", "stage": "compile", "state": None},
    )
    r = decode("workflow", js(doc))
    assert isinstance(r, WorkflowEvent) and (r.stage, r.state) == ("compile", None)


def test_work_item_stage_event() -> None:
    doc = cdevent(
        "dev.cdeventsx.valueloop-workitem.staged.0.1.0",
        {
            "id": "ACME-1",
            "content": {
                "itemId": "ACME-1",
                "itemType": "defect",
                "stage": "waiting-for-qa",
                "action": "entered",
                "state": "waiting",
                "service": "checkout",
            },
        },
    )
    r = decode("workflow", js(doc))
    assert isinstance(r, WorkflowEvent)
    assert (r.item_type, r.stage, r.action, r.state, r.source_type) == (
        "defect",
        "waiting-for-qa",
        "entered",
        "waiting",
        "workitem",
    )
    doc["subject"]["content"]["itemType"] = "epic"
    assert "itemType" in rejected(decode("workflow", js(doc)), "schema-invalid").detail


# ---------------------------------------------------------------------------- incidents
def incident_doc(content: dict[str, Any], custom: dict[str, Any] | None = None) -> dict[str, Any]:
    return cdevent(
        "dev.cdevents.incident.detected.0.2.0",
        {"id": "INC-1", "type": "incident", "content": content},
        custom,
    )


def test_incident_service_is_stripped_and_the_deployment_link_read() -> None:
    doc = incident_doc(
        {
            "environment": {"id": "prod"},
            "service": {"id": "service/checkout"},
            "artifactId": "pkg:oci/c@v1",
        },
        {"changeIds": ["PR-7"]},
    )
    assert decode("incidents", js(doc)) == Incident(
        id="ev-1",
        incident_id="INC-1",
        time=T0_S,
        service="checkout",
        action="detected",
        environment="prod",
        deployment_id="pkg:oci/c@v1",
        change_ids=("PR-7",),
    )
    doc["customData"]["valueloop"]["deploymentId"] = "rel-1"
    r = decode("incidents", js(doc))
    assert isinstance(r, Incident) and r.deployment_id == "rel-1"


def test_an_incident_without_a_service_is_rejected() -> None:
    r = rejected(
        decode("incidents", js(incident_doc({"environment": {"id": "prod"}}))), "schema-invalid"
    )
    assert "subject.content.service" in r.detail


# ---------------------------------------------------------------------------- telemetry
@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (
            {"service": "checkout", "kpi": "orders", "time": T0_S, "value": 3},
            KpiSample("checkout", "orders", T0_S, 3.0),
        ),
        (
            {
                "v": 1,
                "service": "c",
                "kpi": "k",
                "time": T0,
                "value": 1.5,
                "count": 4,
                "labels": {"region": "eu"},
                "id": "x",
            },
            KpiSample("c", "k", T0_S, 1.5, 4.0, {"region": "eu"}, "x"),
        ),
        (
            {"service": "c", "kpi": "k", "time": 0, "value": -2.0, "labels": None, "id": None},
            KpiSample("c", "k", 0.0, -2.0),
        ),
    ],
)
def test_telemetry_samples_decode(sample: dict[str, Any], expected: KpiSample) -> None:
    assert decode("telemetry", js(sample)) == expected


BASE_SAMPLE: dict[str, Any] = {"service": "checkout", "kpi": "orders", "time": T0_S, "value": 1.0}
SAMPLE_CASES: list[tuple[dict[str, Any], str | None]] = [
    ({}, None),
    ({"v": 1}, None),
    ({"v": 2}, "unknown-schema-version"),
    ({"v": "1"}, "unknown-schema-version"),
    ({"v": True}, "unknown-schema-version"),
    ({"time": 1764064800123.0}, "schema-invalid"),  # milliseconds
    ({"time": -1}, "schema-invalid"),
    ({"time": "2025-11-25T10:00:00"}, "schema-invalid"),  # no offset
    ({"time": "2025-11-25T10:00:00.5+01:00"}, None),
    ({"time": "2025-02-30T10:00:00Z"}, "schema-invalid"),
    ({"time": True}, "schema-invalid"),
    ({"value": True}, "schema-invalid"),
    ({"value": "3"}, "schema-invalid"),
    ({"value": 10**19}, None),
    ({"count": 0}, None),
    ({"count": -1}, "invalid-value"),
    ({"count": -1.0}, "invalid-value"),
    ({"count": 0.5}, None),
    ({"count": None}, "schema-invalid"),
    ({"labels": {f"k{i}": "v" for i in range(8)}}, None),
    ({"labels": {f"k{i}": "v" for i in range(9)}}, "too-many-labels"),
    ({"labels": {"k" * 64: "v" * 128}}, None),
    ({"labels": {"k" * 65: "v"}}, "too-long"),
    ({"labels": {"k": "v" * 129}}, "too-long"),
    ({"labels": {"": "v"}}, "schema-invalid"),
    ({"labels": {"k": 1}}, "schema-invalid"),
    ({"labels": ["k"]}, "schema-invalid"),
    ({"service": ""}, "schema-invalid"),
    ({"service": "s" * 128}, None),
    ({"service": "s" * 129}, "too-long"),
    ({"kpi": 7}, "schema-invalid"),
    ({"id": ""}, "schema-invalid"),
    ({"id": "i" * 256}, None),
    ({"unknown": 1}, "schema-invalid"),
]


@pytest.mark.parametrize(("change", "reason"), SAMPLE_CASES)
def test_telemetry_fast_path_and_model_agree(change: dict[str, Any], reason: str | None) -> None:
    obj = {**BASE_SAMPLE, **change}
    fast = decode("telemetry", js(obj))
    if reason is None:
        assert fast == TelemetrySample.model_validate(obj).to_sample()
    else:
        rejected(fast, reason)
        with pytest.raises(ValidationError):
            TelemetrySample.model_validate(obj)


@pytest.mark.parametrize("missing", ["service", "kpi", "time", "value"])
def test_telemetry_required_fields(missing: str) -> None:
    obj = {k: v for k, v in BASE_SAMPLE.items() if k != missing}
    assert missing in rejected(decode("telemetry", js(obj)), "schema-invalid").detail


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
sample_field_values = {
    "v": st.sampled_from([1, 2, 0, True, "1", None]),
    "service": st.one_of(st.text(max_size=130), json_values),
    "kpi": st.one_of(st.text(max_size=130), json_values),
    "time": st.one_of(
        st.floats(-10, 2e10, allow_nan=False),
        st.integers(-5, 10**11),
        st.sampled_from(
            [T0, "2025-11-25T10:00:00", "2025-11-25 10:00:00+02:00", "x", "2400-01-01T00:00:00Z"]
        ),
        json_values,
    ),
    "value": st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(2**63), 2**64 - 1),
        json_values,
    ),
    "count": st.one_of(st.floats(-1, 10, allow_nan=False), st.integers(-1, 5), json_values),
    "labels": st.one_of(
        st.dictionaries(st.text(max_size=66), st.text(max_size=130), max_size=10),
        st.dictionaries(st.text(max_size=3), json_values, max_size=3),
        json_values,
    ),
    "id": st.one_of(st.none(), st.text(max_size=258), json_values),
    "extra": json_values,
}


@PROPS
@given(st.data())
def test_telemetry_fast_path_and_model_agree_on_near_valid_samples(data: st.DataObject) -> None:
    obj = dict(BASE_SAMPLE)
    for key in data.draw(
        st.lists(st.sampled_from(sorted(sample_field_values)), max_size=3, unique=True)
    ):
        if data.draw(st.booleans()) and key in obj:
            del obj[key]
        else:
            obj[key] = data.draw(sample_field_values[key])
    try:
        via_model: KpiSample | None = TelemetrySample.model_validate(obj).to_sample()
    except ValidationError:
        via_model = None
    try:
        fast: KpiSample | None = sample_from_obj(obj)
    except DecodeError:
        fast = None
    assert fast == via_model, obj


# ---------------------------------------------------------------------------- decode_any, keys
def test_decode_any_tells_the_kind_of_each_payload() -> None:
    doc = deployed()
    incident = incident_doc({"environment": {"id": "prod"}, "service": {"id": "checkout"}})
    payloads = [
        (js(doc), None, Release),
        (structured(doc), None, Release),
        (js(doc), binary_headers(doc), Release),
        (js(BASE_SAMPLE), None, KpiSample),
        (js(incident), None, Incident),
        (js(flag_doc()), None, Release),
    ]
    for value, headers, kind in payloads:
        event = decode_any(value, headers)
        assert isinstance(event, kind) and not isinstance(event, Rejected)
        assert (
            codec.role_of(event)
            == {Release: "deployments", KpiSample: "telemetry", Incident: "incidents"}[kind]
        )
    rejected(
        decode_any(js({"context": {"type": "dev.cdevents.taskrun.started.0.2.0"}})), "unknown-type"
    )


def test_topics_are_keyed_by_service() -> None:
    assert codec.key_of(KpiSample("café", "orders", 0.0, 1.0)) == "café".encode()


def test_samples_have_no_cloudevents_form_and_unrepresentable_events_fail_loudly() -> None:
    sample = KpiSample("c", "k", 0.0, 1.0)
    with pytest.raises(ValueError):
        encode_structured(sample)
    with pytest.raises(ValueError):
        encode(WorkflowEvent("i", 0.0, "c", "x", None, "review", "left", source_type="change"))
    with pytest.raises(ValueError):
        encode(Release("r", "c", "v", 0.0, "deployed"), spec_version="0.6.0")


# ---------------------------------------------------------------------------- verdicts
def test_encode_verdict_flattens_the_record_and_nulls_non_finite_numbers() -> None:
    rec = VerdictRecord(
        release_id="rel-1",
        service="checkout",
        version="v1.2.3",
        release_time=T0_S,
        kpi="conversion",
        critical=True,
        phase="final",
        revision=2,
        baseline_window=(T0_S - 3600, T0_S),
        post_window=(T0_S, T0_S + 3600),
        judgement=KpiJudgement(
            kpi="conversion",
            verdict="degraded",
            reason="fell 9%",
            reason_code="significant",
            change=-0.09,
            p_value=float("nan"),
            ci_high=math.inf,
            confounders=("rel-0",),
        ),
        seasonal_reference="weekly",
    )
    out = orjson.loads(codec.encode_verdict(rec))
    assert out["release_time"] == "2025-11-25T10:00:00.000000Z"
    assert out["baseline_start"] == "2025-11-25T09:00:00.000000Z"
    assert (out["verdict"], out["change"], out["p_value"], out["ci_high"]) == (
        "degraded",
        -0.09,
        None,
        None,
    )
    assert (out["confounders"], out["revision"], out["v"]) == (["rel-0"], 2, 1)
    assert ImpactEvent.model_validate(out).kpi == "conversion"


# ---------------------------------------------------------------------------- properties
@PROPS
@given(
    st.sampled_from(ROLES),
    st.binary(max_size=300),
    st.lists(st.tuples(st.text(max_size=20), st.none() | st.binary(max_size=20)), max_size=3),
)
def test_random_bytes_never_raise(
    role: codec.Role, value: bytes, headers: list[tuple[str, bytes | None]]
) -> None:
    for result in (decode(role, value, headers), decode_any(value, headers)):
        assert isinstance(result, Rejected | Release | KpiSample | WorkflowEvent | Incident)
        assert not (isinstance(result, Rejected) and result.reason == "internal-error"), result


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


VALID_DOCS = [
    deployed(customData={"valueloop": {"commits": ["a"], "scope": {"r": "eu"}}}),
    flag_doc(),
    incident_doc({"environment": {"id": "p"}, "service": {"id": "c"}}, {"changeIds": ["x"]}),
    cdevent(
        "dev.cdevents.pipelinerun.finished.0.2.0",
        {"id": "r", "content": {"outcome": "success"}},
        {"state": "active"},
    ),
]


@PROPS
@given(st.data(), st.sampled_from(ROLES), st.sampled_from(["plain", "structured", "binary"]))
def test_near_valid_cdevents_never_raise(data: st.DataObject, role: codec.Role, form: str) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(VALID_DOCS)))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(json_values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
    headers = None
    try:
        value = js(doc)
        if form == "structured":
            value = js({"specversion": "1.0", "id": "x", "source": "/s", "type": "t", "data": doc})
        elif form == "binary":
            headers = [
                ("ce_specversion", b"1.0"),
                ("ce_id", b"x"),
                ("ce_source", b"/s"),
                ("ce_type", b"t"),
            ]
    except TypeError:  # orjson refuses e.g. integers over 64 bits: not a message anyone can send
        return
    for result in (decode(role, value, headers), decode_any(value, headers)):
        assert not (isinstance(result, Rejected) and result.reason == "internal-error"), result


# Near-valid CloudEvents: the envelope agrees with the CDEvent, then 1-4 mutations hit it: a type
# flip to another event we read (or a bogus one), a spec version flip, a dropped key, a huge
# string, NaN/Infinity in a number's place, or any JSON value. Python's json writes NaN/Infinity
# tokens, as producers using it by default do.
KNOWN_TYPES = sorted(
    {e.type_for(v) for e in EVENT_TYPES.values() for v in ("0.3.0", "0.4.1", "0.5.0")}
)
mutation_values = st.one_of(
    json_values,
    st.text(min_size=200, max_size=3000),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1, 0, "", None, [], {}]),
)


def _mutate(data: st.DataObject, doc: dict[str, Any]) -> None:
    kind = data.draw(st.sampled_from(["type", "spec", "drop", "set", "set"]))
    ctx = doc.get("context")
    if kind == "type" and isinstance(ctx, dict):
        ctx["type"] = data.draw(st.sampled_from([*KNOWN_TYPES, "dev.cdevents.nope.x.0.1.0", 7]))
        return
    if kind == "spec" and isinstance(ctx, dict):
        ctx.pop("version", None)
        ctx.pop("specversion", None)
        key = data.draw(st.sampled_from(["version", "specversion"]))
        ctx[key] = data.draw(st.sampled_from(["0.3.0", "0.4.1", "0.5.0", "0.6.0", "1.0", 0.4]))
        return
    path = data.draw(st.sampled_from(_paths(doc)[1:] or [("context",)]))
    parent: Any = doc
    for p in path[:-1]:
        parent = parent[p]
    if kind == "drop" and isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif isinstance(parent, dict | list):
        parent[path[-1]] = data.draw(mutation_values)


def _dumps(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode()  # NaN and Infinity as bare tokens, like Python producers


@PROPS
@given(st.data(), st.sampled_from(["plain", "structured", "binary"]))
def test_mutated_cloudevents_are_rejected_by_a_known_reason_and_never_raise(
    data: st.DataObject, form: str
) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(VALID_DOCS)))
    original = decode_any(js(doc))
    assert not isinstance(original, Rejected), original
    role = data.draw(st.sampled_from([codec.role_of(original), *ROLES]))
    ctx = doc["context"]
    envelope = {"specversion": "1.0", "id": ctx["id"], "source": "/s", "type": ctx["type"]}
    for _ in range(data.draw(st.integers(1, 4))):
        target = doc if form == "plain" or data.draw(st.booleans()) else envelope
        if target is envelope:
            key = data.draw(st.sampled_from(sorted(envelope)))
            if data.draw(st.booleans()):
                del envelope[key]
            else:
                envelope[key] = data.draw(
                    st.sampled_from([*KNOWN_TYPES[:3], "0.3", "", "x" * 500, 1])
                )
        else:
            _mutate(data, doc)
    headers: list[tuple[str, bytes | None]] | None = None
    if form == "structured":
        value = _dumps({**envelope, "data": doc})
    else:
        value = _dumps(doc)
        if form == "binary":
            headers = [(f"ce_{k}", str(v).encode()) for k, v in envelope.items()]
    for result in (decode(role, value, headers), decode_any(value, headers)):
        event(result.reason if isinstance(result, Rejected) else "decoded")
        if isinstance(result, Rejected):
            assert result.reason in codec.REASONS and result.reason != "internal-error", result
        else:
            assert isinstance(result, Release | WorkflowEvent | Incident)


@PROPS
@given(st.data())
def test_mutated_samples_are_rejected_by_a_known_reason_and_never_raise(
    data: st.DataObject,
) -> None:
    obj: dict[str, Any] = {**BASE_SAMPLE, "count": 2, "labels": {"region": "eu"}, "id": "i-1"}
    for _ in range(data.draw(st.integers(1, 4))):
        key = data.draw(st.sampled_from([*sorted(obj), "v", "extra"]))
        if data.draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = data.draw(mutation_values)
    value = _dumps(obj)
    cut = data.draw(st.none() | st.integers(0, len(value)))  # a message cut anywhere
    if cut is not None:
        value = value[:cut]
    result = decode("telemetry", value)
    event(result.reason if isinstance(result, Rejected) else "decoded")
    if isinstance(result, Rejected):
        assert result.reason in codec.REASONS and result.reason != "internal-error", result
    else:
        assert isinstance(result, KpiSample) and math.isfinite(result.value)
        assert result.count >= 0 and len(result.service) <= 128 and len(result.labels) <= 8


names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=24)
micro_times = st.integers(0, 4_000_000_000 * 10**6).map(lambda us: us / 10**6)
ids = st.lists(names, max_size=3).map(tuple)
scopes = st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=128), max_size=8)
spec_versions = st.sampled_from(["0.3.0", "0.4.1", "0.5.0"])


@st.composite
def releases(draw: st.DrawFn) -> Release:
    common: dict[str, Any] = {
        "id": draw(names),
        "service": draw(names),
        "time": draw(micro_times),
        "environment": draw(names),
        "commits": draw(ids),
        "change_ids": draw(ids),
        "scope": draw(scopes),
    }
    kind = draw(st.sampled_from([*RELEASE_KINDS, None]))
    if kind is not None:
        return Release(version=draw(names), kind=kind, **common)
    flag, pct = draw(names), draw(st.floats(0, 100))
    return Release(
        version=flag_version(flag, draw(names), pct),
        kind="flag",
        flag_key=flag,
        rollout_percent=pct,
        **common,
    )


@st.composite
def workflow_events(draw: st.DrawFn) -> WorkflowEvent:
    name = draw(st.sampled_from([*_MAP, "workitem"]))
    common: dict[str, Any] = {
        "id": draw(names),
        "time": draw(micro_times),
        "service": draw(names),
        "item_id": draw(names),
        "stage": draw(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=64)),
        "state": draw(st.sampled_from([None, "active", "waiting"])),
        "commits": draw(ids),
    }
    item_type = draw(st.sampled_from(ITEM_TYPES))
    if name == "workitem":
        return WorkflowEvent(
            item_type=item_type or "feature",
            action=draw(st.sampled_from(["entered", "left"])),
            **common,
        )
    source_type, action, outcome = _MAP[name]
    if name == "pipelinerun.finished":
        outcome = draw(st.none() | names)
    elif name == "testsuiterun.finished":
        outcome = draw(st.sampled_from([None, "success", "failure", "cancel", "error"]))
    return WorkflowEvent(
        item_type=item_type, action=action, source_type=source_type, outcome=outcome, **common
    )


@st.composite
def incidents(draw: st.DrawFn) -> Incident:
    return Incident(
        id=draw(names),
        incident_id=draw(names),
        time=draw(micro_times),
        service=draw(names),
        action=draw(st.sampled_from(["detected", "reported", "resolved"])),
        environment=draw(names),
        deployment_id=draw(st.none() | names),
        change_ids=draw(ids),
        description=draw(st.none() | st.text(max_size=40)),
    )


samples = st.builds(
    KpiSample,
    service=names,
    kpi=names,
    time=st.floats(0, 1e10, exclude_max=True),
    value=st.floats(allow_nan=False, allow_infinity=False),
    count=st.floats(0, 1e12, exclude_min=True),
    labels=scopes,
    id=st.none() | names,
)


@PROPS
@given(st.one_of(releases(), workflow_events(), incidents()), spec_versions)
def test_cdevents_round_trip_in_every_form_and_spec_version(event: Any, spec: str) -> None:
    role = codec.role_of(event)
    assert decode(role, encode(event, spec_version=spec)) == event
    assert decode(role, encode_structured(event, spec_version=spec)) == event
    value, headers = encode_binary(event, spec_version=spec)
    assert decode(role, value, headers) == event


@PROPS
@given(samples)
def test_samples_round_trip(sample: KpiSample) -> None:
    assert decode("telemetry", encode(sample)) == sample
    assert codec.key_of(sample) == sample.service.encode()


def test_cdevents_carry_time_to_the_microsecond() -> None:
    r = Release("r", "c", "v", 1764064800.1234567, "deployed")
    back = decode("deployments", encode(r))
    assert isinstance(back, Release)
    assert back.time == timestamp_seconds("2025-11-25T10:00:00.123457Z")
