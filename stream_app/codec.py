"""Bytes <-> events: CDEvents (plain, CloudEvents structured or binary mode) and telemetry samples.

`decode` never raises for bad input: it returns `Rejected` with a bounded ``reason`` (a metric
label, one of `REASONS`) and a human ``detail``. Forms of a CDEvent it accepts, all decoding to the
same internal event:

- plain: the CDEvent document (``context``, ``subject``, optional ``customData``) as the value;
- structured CloudEvent: ``{"specversion": "1.0", "id", "source", "type", ..., "data": <CDEvent>}``;
- Kafka binary CloudEvent: ``ce_specversion``, ``ce_id``, ``ce_source``, ``ce_type`` (``ce_time``,
  ...) headers and the CDEvent as the value.

In both CloudEvents forms ``type`` and ``id`` must equal the CDEvent's ``context.type`` and
``context.id`` (the CDEvents binding requires it), else ``envelope-mismatch``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from stream_app.core.types import VerdictRecord
from stream_app.errors import DecodeError
from stream_app.events import (
    DEFAULT_SPEC_VERSION,
    MAX_NAME,
    ROLES,
    CloudEvent,
    EventType,
    Role,
    event_type,
    json_type,
    spec_line,
)
from stream_app.events.deployments import release_from_cdevent, release_to_cdevent
from stream_app.events.impact import impact_event
from stream_app.events.incidents import incident_from_cdevent, incident_to_cdevent
from stream_app.events.model import Incident, KpiSample, Release, WorkflowEvent
from stream_app.events.telemetry import sample_from_obj, sample_to_obj
from stream_app.events.workflow import workflow_from_cdevent, workflow_to_cdevent

__all__ = [
    "DEFAULT_MAX_BYTES",
    "REASONS",
    "Decoded",
    "Rejected",
    "Role",
    "decode",
    "decode_any",
    "encode",
    "encode_binary",
    "encode_structured",
    "encode_verdict",
    "key_of",
    "role_of",
]

Decoded = Release | KpiSample | WorkflowEvent | Incident
DEFAULT_MAX_BYTES = 262144
REASONS: tuple[str, ...] = (
    "empty",
    "oversized",
    "invalid-utf8",
    "truncated",
    "not-json",
    "non-finite",
    "invalid-value",
    "schema-invalid",
    "too-long",
    "too-many-labels",
    "unknown-type",
    "unknown-specversion",
    "unknown-schema-version",
    "wrong-topic",
    "envelope-mismatch",
    "bad-expectation",
    "internal-error",
)
DETAIL_ERRORS = 4  # validation errors spelled out in a detail; the rest are counted
_NON_FINITE_RE = re.compile(rb"[:\[,]\s*(NaN|-?Infinity)\b")  # as a value, not inside a string
_TYPE_TAG_RE = re.compile(r"^[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*$|\[|^(str|float|int|bool|none)$")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not an event: ``reason`` is a bounded code, ``detail`` explains it."""

    reason: str
    detail: str


MAX_ID = 256  # event, item, incident ids, commits and change ids
MAX_VERSION = 256  # a release version is a Prometheus label value (valueloop_release_info)
MAX_REFS = 1000  # commits / change ids carried by one event
MAX_TEXT = 4096  # free text (an incident description)


def check_bounds(event: Decoded) -> Decoded:
    """Return a decoded CDEvent when its strings and lists are within bounds (they become state,
    keys and label values), else raise DecodeError ``too-long``."""

    def limit(what: str, value: str | None, most: int) -> None:
        if value is not None and len(value) > most:
            raise DecodeError("too-long", f"{what}: at most {most} characters, got {len(value)}")

    def refs(what: str, values: tuple[str, ...]) -> None:
        if len(values) > MAX_REFS:
            raise DecodeError("too-long", f"{what}: at most {MAX_REFS} entries, got {len(values)}")
        for v in values:
            limit(what, v, MAX_ID)

    limit("id (context.id)", event.id, MAX_ID)
    limit("service", event.service, MAX_NAME)
    if isinstance(event, Release | WorkflowEvent):
        limit("context.chainId", event.chain_id, MAX_ID)
    if isinstance(event, Release):
        limit("version", event.version, MAX_VERSION)
        limit("environment", event.environment, MAX_NAME)
        refs("commits", event.commits)
        refs("changeIds", event.change_ids)
    elif isinstance(event, WorkflowEvent):
        limit("item id (subject.id)", event.item_id, MAX_ID)
        limit("outcome", event.outcome, MAX_NAME)
        refs("commits", event.commits)
    elif isinstance(event, Incident):
        limit("incident id (subject.id)", event.incident_id, MAX_ID)
        limit("environment", event.environment, MAX_NAME)
        limit("deploymentId", event.deployment_id, MAX_ID)
        limit("description", event.description, MAX_TEXT)
        refs("changeIds", event.change_ids)
    return event


_DECODERS: dict[str, Callable[[Mapping[str, Any], EventType, str | None], Decoded]] = {
    "deployments": lambda doc, ev, key: check_bounds(release_from_cdevent(doc, ev, key)),
    "workflow": lambda doc, ev, key: check_bounds(workflow_from_cdevent(doc, ev, key)),
    "incidents": lambda doc, ev, key: check_bounds(incident_from_cdevent(doc, ev, key)),
}


def key_name(key: bytes | str | None) -> str | None:
    """A message key (or CloudEvents ``partitionkey``) as a service name, or None when it cannot
    be one (absent, not UTF-8, empty or longer than a service name): then it is not used."""
    if isinstance(key, bytes | bytearray):
        try:
            key = bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not key or len(key) > MAX_NAME:
        return None
    return key


# ---------------------------------------------------------------------------- decode
def decode(
    role: Role,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    key: bytes | str | None = None,
) -> Decoded | Rejected:
    """Decode one message of the topic with ``role``.

    Args:
        role: which input topic the message came from.
        value: the message value (None for a tombstone).
        headers: Kafka headers; ``ce_*`` headers mean a binary-mode CloudEvent.
        max_bytes: larger values are rejected as ``oversized`` without being parsed.
        key: the message key: the service of an event that names none (README, "Service
            names"); the CloudEvents ``partitionkey`` attribute stands in when there is no key.

    Returns:
        The internal event, or `Rejected` (``wrong-topic`` when it is a valid kind of event for
        another topic).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")  # a programming error, not bad input
    return _guarded(role, value, headers, max_bytes, key)


def decode_any(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    key: bytes | str | None = None,
) -> Decoded | Rejected:
    """Decode a message of any kind, telling it by its CloudEvents/CDEvents type or sample shape.

    For offline replay over files of mixed payloads; `role_of` tells the result's topic.
    """
    return _guarded(None, value, headers, max_bytes, key)


def _guarded(
    role: Role | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    max_bytes: int,
    key: bytes | str | None = None,
) -> Decoded | Rejected:
    try:
        return _decode(role, value, headers, max_bytes, key)
    except DecodeError as exc:
        return Rejected(exc.reason, exc.detail)
    except ValidationError as exc:
        return Rejected(validation_reason(exc), summarise(exc))
    except (
        Exception
    ) as exc:  # a decoder bug must not kill the consuming agent; tests assert it never happens
        return Rejected("internal-error", f"{type(exc).__name__}: {str(exc)[:200]}")


def validation_reason(exc: ValidationError) -> str:
    """``too-many-labels`` or ``too-long`` when every error is of that kind, else schema-invalid."""
    kinds = set()
    for err in exc.errors(include_url=False, include_input=False):
        names = [p for p in err["loc"] if isinstance(p, str)]
        if err["type"].endswith("_type") and names and _TYPE_TAG_RE.search(names[-1]):
            continue  # another member of a union (customData: object | str) did not match
        if err["type"] == "too_long" and names and names[-1] in ("scope", "labels"):
            kinds.add("too-many-labels")
        elif err["type"] in ("string_too_long", "too_long"):
            kinds.add("too-long")
        else:
            return "schema-invalid"
    return kinds.pop() if len(kinds) == 1 else "schema-invalid"


def summarise(exc: ValidationError) -> str:
    """A validation error as ``field.path: message`` items, the first few spelled out."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for err in errors[:DETAIL_ERRORS]:
        # Drop pydantic's union-member and model tags from the path: users know only field names.
        loc = ".".join(
            str(p) for p in err["loc"] if not (isinstance(p, str) and _TYPE_TAG_RE.search(p))
        )
        parts.append(f"{loc or '(document)'}: {err['msg']}")
    more = len(errors) - DETAIL_ERRORS
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _decode(
    role: Role | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    max_bytes: int,
    key: bytes | str | None = None,
) -> Decoded:
    ce = _ce_headers(headers) if headers else None
    obj = _load(value, max_bytes)
    # Hot path: a sample on the telemetry topic (or in a replay file) goes straight to the
    # sample checks.
    if (
        (role == "telemetry" or role is None)
        and ce is None
        and type(obj) is dict
        and "context" not in obj
        and "specversion" not in obj
    ):
        return sample_from_obj(obj)
    if ce is not None:
        doc = _binary(ce, obj)
    elif type(obj) is dict and "specversion" in obj:
        doc, ce = _structured(obj)
    elif type(obj) is dict and "context" in obj:
        doc = obj
    elif role is None or role == "telemetry":
        return sample_from_obj(obj)
    elif type(obj) is dict and "kpi" in obj and "value" in obj:
        raise DecodeError("wrong-topic", f"a telemetry sample on the {role} topic")
    else:
        raise DecodeError(
            "schema-invalid",
            "expected a CDEvent (context, subject) or a CloudEvent carrying one, "
            f"got {_shape(obj)}",
        )
    context = doc.get("context")
    if type(context) is not dict:
        raise DecodeError("schema-invalid", f"context: required object, got {_shape(context)}")
    event = event_type(context.get("type"))
    if role is not None and event.role != role:
        raise DecodeError(
            "wrong-topic", f"a {event.name} event belongs on the {event.role} topic, not {role}"
        )
    if ce is not None:
        _check_envelope(ce, context)
    spec_line(context.get("specversion", context.get("version")))
    name = key_name(key)
    if name is None and ce is not None:
        name = key_name(ce.get("partitionkey"))
    return _DECODERS[event.role](doc, event, name)


def _shape(obj: object) -> str:
    if type(obj) is dict:
        keys = ", ".join(sorted(str(k)[:30] for k in obj)[:6])
        return f"an object with keys [{keys}]"
    return f"a JSON {json_type(obj)}"


def _load(value: bytes | None, max_bytes: int) -> Any:
    if value is None or len(value) == 0:
        raise DecodeError("empty", "the message has no value (tombstone or empty)")
    if len(value) > max_bytes:
        raise DecodeError("oversized", f"{len(value)} bytes is over the {max_bytes}-byte limit")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _json_error(bytes(value), exc) from None


def _json_error(value: bytes, exc: orjson.JSONDecodeError) -> DecodeError:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as u:
        if u.reason == "unexpected end of data":  # cut inside a multi-byte character
            return DecodeError("truncated", f"the message ends inside a UTF-8 character: {exc}")
        return DecodeError("invalid-utf8", f"not UTF-8 at byte {u.start}: {u.reason}")
    if str(exc).startswith("unexpected end of data"):
        # A producer or a proxy cut the message: say so rather than "not JSON".
        return DecodeError("truncated", f"the JSON document ends early ({len(value)} bytes): {exc}")
    # Python's json.dumps writes NaN/Infinity by default: say so rather than "not JSON".
    if "infinity" in str(exc) or _NON_FINITE_RE.search(value):
        return DecodeError("non-finite", f"NaN or infinite number (not valid JSON): {exc}")
    return DecodeError("not-json", str(exc)[:300])


def _ce_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str] | None:
    """CloudEvents attributes of a binary-mode message, or None when it is not one."""
    found: dict[str, str] = {}
    for name, raw in headers:
        key = (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)).lower()
        if not (key.startswith("ce_") or key == "content-type") or raw is None:
            continue
        try:
            found[key] = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else str(raw)
        except UnicodeDecodeError:
            raise DecodeError("invalid-utf8", f"header {key}: not UTF-8") from None
    if "ce_specversion" not in found:
        return None
    return {k[3:] if k.startswith("ce_") else "datacontenttype": v for k, v in found.items()}


def _check_specversion(specversion: object) -> None:
    if specversion != "1.0":
        raise DecodeError(
            "unknown-specversion",
            f"CloudEvents specversion {str(specversion)[:20]!r} is not supported (1.0)",
        )


def _check_content_type(content_type: object) -> None:
    if content_type is not None and "json" not in str(content_type).lower():
        raise DecodeError(
            "schema-invalid", f"content type {str(content_type)[:60]!r}: the CDEvent must be JSON"
        )


def _binary(ce: dict[str, str], obj: Any) -> dict[str, Any]:
    _check_specversion(ce.get("specversion"))
    missing = [f"ce_{k}" for k in ("id", "source", "type") if not ce.get(k)]
    if missing:
        raise DecodeError(
            "schema-invalid", f"binary-mode CloudEvent without header(s) {', '.join(missing)}"
        )
    _check_content_type(ce.get("datacontenttype"))
    event_type(ce.get("type"))  # an unknown CloudEvents type says so before any schema check
    if type(obj) is not dict or "context" not in obj:
        raise DecodeError(
            "schema-invalid",
            f"the value of a binary-mode CloudEvent must be a CDEvent, got {_shape(obj)}",
        )
    return obj


def _structured(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    _check_specversion(obj.get("specversion"))
    if "data_base64" in obj:
        raise DecodeError("schema-invalid", "data_base64: the CDEvent must be JSON in data")
    if isinstance(obj.get("type"), str):
        event_type(obj["type"])  # an unknown CloudEvents type says so before any schema check
    envelope = CloudEvent.model_validate(obj)
    _check_content_type(envelope.datacontenttype)
    attrs = {"id": envelope.id, "type": envelope.type}
    partitionkey = obj.get("partitionkey")
    if isinstance(partitionkey, str):
        attrs["partitionkey"] = partitionkey
    return envelope.data, attrs


def _check_envelope(ce: Mapping[str, str], context: Mapping[str, Any]) -> None:
    for attr in ("type", "id"):
        inner = context.get(attr)
        if isinstance(inner, str) and ce.get(attr) != inner:
            raise DecodeError(
                "envelope-mismatch",
                f"CloudEvents {attr} {str(ce.get(attr))[:80]!r} differs from "
                f"context.{attr} {inner[:80]!r}",
            )


# ---------------------------------------------------------------------------- encode
def role_of(event: Decoded) -> Role:
    """The input topic role an internal event belongs to."""
    if isinstance(event, KpiSample):
        return "telemetry"
    if isinstance(event, Release):
        return "deployments"
    if isinstance(event, WorkflowEvent):
        return "workflow"
    if isinstance(event, Incident):
        return "incidents"
    raise TypeError(f"not an event: {type(event).__name__}")


def key_of(event: Decoded) -> bytes:
    """The Kafka key of an event: its service, UTF-8 (every input topic is keyed by service),
    but a sample that names its product is keyed by the product (its state's partition)."""
    if type(event) is KpiSample and event.product is not None:
        return event.product.encode()
    return event.service.encode()


def cdevent_of(event: Decoded, *, spec_version: str = DEFAULT_SPEC_VERSION) -> dict[str, Any]:
    """The CDEvent document of a release, workflow event or incident.

    Raises:
        ValueError: a telemetry sample (it is not a CDEvent), or an event no CDEvent carries.
    """
    try:
        spec_line(spec_version)
    except DecodeError as exc:
        raise ValueError(exc.detail) from None
    if isinstance(event, Release):
        return release_to_cdevent(event, spec_version)
    if isinstance(event, WorkflowEvent):
        return workflow_to_cdevent(event, spec_version)
    if isinstance(event, Incident):
        return incident_to_cdevent(event, spec_version)
    raise ValueError(f"a {type(event).__name__} has no CDEvents form")


def encode(event: Decoded, *, spec_version: str = DEFAULT_SPEC_VERSION) -> bytes:
    """Internal event -> wire bytes: the plain CDEvent document, or the compact JSON of a sample.

    CDEvents carry time to the microsecond; ``decode(encode(e)) == e`` for events whose time is a
    whole number of microseconds.
    """
    if isinstance(event, KpiSample):
        return orjson.dumps(sample_to_obj(event))
    return orjson.dumps(cdevent_of(event, spec_version=spec_version))


def _cloudevent_attributes(doc: Mapping[str, Any]) -> dict[str, str]:
    ctx = doc["context"]
    return {
        "specversion": "1.0",
        "id": ctx["id"],
        "source": ctx["source"],
        "type": ctx["type"],
        "subject": doc["subject"]["id"],
        "time": ctx["timestamp"],
    }


def encode_structured(event: Decoded, *, spec_version: str = DEFAULT_SPEC_VERSION) -> bytes:
    """The CDEvent of ``event`` inside a structured-mode CloudEvent (JSON).

    Raises:
        ValueError: for a telemetry sample (samples are not CloudEvents).
    """
    doc = cdevent_of(event, spec_version=spec_version)
    return orjson.dumps(
        {**_cloudevent_attributes(doc), "datacontenttype": "application/json", "data": doc}
    )


def encode_binary(
    event: Decoded, *, spec_version: str = DEFAULT_SPEC_VERSION
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The CDEvent of ``event`` as a Kafka binary-mode CloudEvent: (value, ``ce_*`` headers).

    Raises:
        ValueError: for a telemetry sample (samples are not CloudEvents).
    """
    doc = cdevent_of(event, spec_version=spec_version)
    headers = [(f"ce_{k}", v.encode()) for k, v in _cloudevent_attributes(doc).items()]
    headers.append(("content-type", b"application/json"))
    return orjson.dumps(doc), headers


def encode_verdict(rec: VerdictRecord) -> bytes:
    """A verdict record as the impact-topic JSON (`stream_app.events.impact.ImpactEvent`)."""
    return orjson.dumps(impact_event(rec).model_dump())
