"""Event contracts: the shared CDEvents envelope, its helpers and the registry of event types.

CDEvents 0.3 and 0.4 name the context's spec version ``context.version`` and carry ``subject.type``;
0.5 renames it ``context.specversion`` and drops ``subject.type``. We accept either key in any
supported spec version (0.3.x, 0.4.x, 0.5.x) and ``subject.type`` when present (it must then name
the right subject). A type version is accepted when its ``major.minor`` is one that spec 0.3, 0.4
or 0.5 defines for that event (any patch), whatever the document's spec version says: producers
upgrade SDKs one event at a time and the content we read did not change meaning across them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from stream_app.errors import DecodeError
from stream_app.events.model import Expectation, format_change, parse_expectation

Role = Literal["deployments", "telemetry", "workflow", "incidents"]
ROLES: tuple[Role, ...] = ("deployments", "telemetry", "workflow", "incidents")
SpecLine = Literal["0.3", "0.4", "0.5"]

DEFAULT_SPEC_VERSION = "0.4.1"
SOURCE = "/valueloop"  # context.source of the events valueloop itself encodes
SPEC_VERSION_PATTERN = r"^0\.[345]\.[0-9]+(-[0-9A-Za-z.-]+)?$"
_SPEC_VERSION_RE = re.compile(SPEC_VERSION_PATTERN)
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339_RE = re.compile(RFC3339_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

MAX_NAME = 128  # service and KPI names: Kafka keys and Prometheus label values
MAX_STAGE = 64  # stage names are Prometheus label values too
MAX_LABELS = 8
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 128
MAX_LINKS = 100  # linked context ids kept per event (CDEvents links)
MAX_LINK_ID = 256


# ---------------------------------------------------------------------------- time
def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (offset required).

    Args:
        text: e.g. ``2023-03-20T14:27:05.315384Z``.

    Returns:
        An aware datetime.

    Raises:
        ValueError: the text is not an RFC 3339 timestamp with an offset.
    """
    if not _RFC3339_RE.match(text):
        raise ValueError(f"not an RFC 3339 timestamp with a UTC offset: {text[:64]!r}")
    # fromisoformat (3.11) reads "Z" but not "z"; RFC 3339 allows both.
    return datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))


def timestamp_seconds(text: str) -> float:
    """POSIX seconds of an RFC 3339 timestamp, exact to the microsecond.

    Integer microseconds divided once keep the round trip with `format_timestamp` exact.
    """
    return ((parse_rfc3339(text) - _EPOCH) // _MICROSECOND) / 1_000_000


def format_timestamp(seconds: float) -> str:
    """RFC 3339 UTC timestamp with microseconds (``...T14:27:05.315384Z``) of POSIX seconds."""
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def _valid_rfc3339(text: str) -> str:
    parse_rfc3339(text)
    return text


Timestamp = Annotated[
    str,
    Field(pattern=RFC3339_PATTERN, json_schema_extra={"format": "date-time"}),
    AfterValidator(_valid_rfc3339),
]


# ---------------------------------------------------------------------------- names, purls
def last_segment(identifier: str) -> str:
    """The last path segment: ``service/myapp`` -> ``myapp``, ``myapp`` -> ``myapp``."""
    return identifier.rstrip("/").rsplit("/", 1)[-1]


def check_name(name: str, what: str, limit: int = MAX_NAME) -> str:
    """Return ``name`` when it is a usable service/stage name, else raise DecodeError."""
    if not name or len(name) > limit:
        raise DecodeError(
            "too-long" if name else "schema-invalid",
            f"{what}: must be 1 to {limit} characters, got {len(name)}: {name[:80]!r}",
        )
    return name


_DIGEST_RE = re.compile(r"^([a-z0-9]+:)?[0-9a-fA-F]{7,128}$")


def purl_parts(purl: str) -> tuple[str, str | None] | None:
    """(name, version) of a package URL, percent-decoded; None when ``purl`` is not a purl.

    ``pkg:oci/myapp@sha256%3A0b31...`` -> ``("myapp", "sha256:0b31...")``.
    """
    if not purl.startswith("pkg:"):
        return None
    body = purl[4:].split("#", 1)[0].split("?", 1)[0]
    # '@' in a purl's namespace or name must be percent-encoded: the last '@' starts the version.
    path, at, version = body.rpartition("@")
    if not at:
        path, version = body, ""
    name = unquote(last_segment(path))
    return name, (unquote(version) or None)


def artifact_version(artifact_id: str) -> str | None:
    """The version an artifact id names: the purl version, or the id itself when it is a digest."""
    parts = purl_parts(artifact_id)
    if parts is not None:
        return parts[1]
    return artifact_id if _DIGEST_RE.match(artifact_id) else None


def purl(name: str, version: str) -> str:
    """A generic package URL for ``name`` at ``version`` (both percent-encoded)."""
    return f"pkg:generic/{quote(name, safe='')}@{quote(version, safe='')}"


# ---------------------------------------------------------------------------- type registry
@dataclass(frozen=True, slots=True)
class EventType:
    """A CDEvents event type valueloop reads, with the type version each spec line defines."""

    namespace: str  # "dev.cdevents", or "dev.cdeventsx" for custom events
    subject: str
    predicate: str
    role: Role
    subject_type: str  # subject.type in spec 0.3/0.4
    versions: tuple[str, str, str]  # type version defined by spec 0.3, 0.4, 0.5

    @property
    def name(self) -> str:
        """``subject.predicate``, e.g. ``service.deployed``."""
        return f"{self.subject}.{self.predicate}"

    def minors(self) -> tuple[str, ...]:
        """Accepted ``major.minor`` type versions, in spec order, without duplicates."""
        return tuple(dict.fromkeys(v.rsplit(".", 1)[0] for v in self.versions))

    def accepts(self, type_version: str) -> bool:
        """Whether ``type_version`` (``0.1.1``) is one of this event's spec-defined versions."""
        return type_version.rsplit(".", 1)[0] in self.minors()

    def type_for(self, spec_version: str) -> str:
        """The full ``context.type`` this event has in ``spec_version``."""
        line = spec_line(spec_version)
        version = self.versions[("0.3", "0.4", "0.5").index(line)]
        return f"{self.namespace}.{self.name}.{version}"

    def type_regex(self) -> str:
        """A regular-expression fragment matching every accepted ``context.type``."""
        minors = "|".join(re.escape(m) for m in self.minors())
        return rf"{re.escape(self.namespace)}\.{re.escape(self.name)}\.(?:{minors})\.[0-9]+"


def _std(
    subject: str, predicates: str, role: Role, subject_type: str, *versions: str
) -> list[EventType]:
    assert len(versions) == 3
    return [
        EventType(
            "dev.cdevents", subject, p, role, subject_type, (versions[0], versions[1], versions[2])
        )
        for p in predicates.split()
    ]


# Type versions from the cdevents/spec schemas of tags v0.3.0, v0.4.1 (= v0.4.0), v0.5.0 (= v0.5.1).
EVENT_TYPES: dict[str, EventType] = {
    e.name: e
    for e in [
        *_std(
            "service",
            "deployed upgraded rolledback",
            "deployments",
            "service",
            "0.1.1",
            "0.2.0",
            "0.3.0",
        ),
        *_std("change", "created", "workflow", "change", "0.1.2", "0.3.0", "0.4.0"),
        *_std(
            "change",
            "reviewed merged abandoned updated",
            "workflow",
            "change",
            "0.1.2",
            "0.2.0",
            "0.3.0",
        ),
        *_std(
            "pipelinerun",
            "queued started finished",
            "workflow",
            "pipelineRun",
            "0.1.1",
            "0.2.0",
            "0.3.0",
        ),
        *_std("build", "queued started finished", "workflow", "build", "0.1.1", "0.2.0", "0.3.0"),
        *_std(
            "testsuiterun",
            "queued started finished",
            "workflow",
            "testSuiteRun",
            "0.1.0",
            "0.2.0",
            "0.3.0",
        ),
        *_std("artifact", "packaged published", "workflow", "artifact", "0.1.1", "0.2.0", "0.3.0"),
        *_std(
            "incident",
            "detected reported resolved",
            "incidents",
            "incident",
            "0.1.0",
            "0.2.0",
            "0.3.0",
        ),
        EventType(
            "dev.cdeventsx",
            "valueloop-flag",
            "changed",
            "deployments",
            "valueloop-flag",
            ("0.1.0",) * 3,
        ),
        EventType(
            "dev.cdeventsx",
            "valueloop-workitem",
            "staged",
            "workflow",
            "valueloop-workitem",
            ("0.1.0",) * 3,
        ),
    ]
}
FLAG_EVENT = "valueloop-flag.changed"
WORKITEM_EVENT = "valueloop-workitem.staged"

_TYPE_RE = re.compile(
    r"^(dev\.cdevents|dev\.cdeventsx)\.([A-Za-z0-9]+(?:-[A-Za-z]+)?)\.([A-Za-z]+)\.([0-9]+\.[0-9]+\.[0-9]+)$"
)


def event_type(type_name: object) -> EventType:
    """The registered event type of a ``context.type`` value.

    Raises:
        DecodeError: ``unknown-type`` when it is not an event valueloop reads (or not a version the
            supported specs define).
    """
    if not isinstance(type_name, str):
        raise DecodeError(
            "unknown-type", f"context.type must be a string, got {json_type(type_name)}"
        )
    m = _TYPE_RE.match(type_name)
    entry = EVENT_TYPES.get(f"{m.group(2)}.{m.group(3)}") if m else None
    if m is None or entry is None or entry.namespace != m.group(1):
        raise DecodeError(
            "unknown-type", f"valueloop does not read CDEvents of type {type_name[:120]!r}"
        )
    if not entry.accepts(m.group(4)):
        raise DecodeError(
            "unknown-type",
            f"{type_name[:120]!r}: {entry.name} version {m.group(4)} is not defined by "
            "CDEvents 0.3-0.5 "
            f"(accepted: {', '.join(v + '.x' for v in entry.minors())})",
        )
    return entry


def types_pattern(*names: str) -> str:
    """A JSON Schema pattern matching every accepted ``context.type`` of the named events."""
    return "^(?:" + "|".join(EVENT_TYPES[n].type_regex() for n in names) + ")$"


def spec_line(spec_version: object) -> SpecLine:
    """``0.3``, ``0.4`` or ``0.5`` for a supported CDEvents spec version.

    Raises:
        DecodeError: ``unknown-specversion`` for any other value.
    """
    if not isinstance(spec_version, str) or not _SPEC_VERSION_RE.match(spec_version):
        raise DecodeError(
            "unknown-specversion",
            f"CDEvents spec version {str(spec_version)[:40]!r} is not supported "
            "(0.3.x, 0.4.x, 0.5.x)",
        )
    line: SpecLine = spec_version[:3]  # type: ignore[assignment]  # the regex guarantees 0.3/0.4/0.5
    return line


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error details."""
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


_JSON_TYPES = {
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


# ---------------------------------------------------------------------------- envelope models
STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
OPEN = ConfigDict(
    strict=True, extra="ignore", frozen=True
)  # spec content: we read a few fields only

NonEmpty = Annotated[str, StringConstraints(min_length=1)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Stage = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STAGE)]
SpecVersion = Annotated[str, Field(pattern=SPEC_VERSION_PATTERN)]
MAX_EXPECT = 16  # bets declared on one event


class ExpectDecl(BaseModel):
    """A bet in ``customData.valueloop.expect``: ``{"kpi": "conversion", "change": "+3%"}``.

    ``change`` is a signed percentage ("+3%" up, "-5%" down) or a signed fraction (0.03).
    """

    model_config = ConfigDict(strict=False, extra="forbid", frozen=True)

    kpi: Any = Field(description="The KPI the change should move, as the catalog names it.")
    change: Any = Field(description='Signed expected change: "+3%", "-5%" or 0.03.')


def expectations(decls: list[ExpectDecl] | None, where: str) -> tuple[Expectation, ...]:
    """The bets of an event's ``expect`` list.

    Raises:
        DecodeError: ``bad-expectation``: too many, or one is not usable (the detail says which
            and why); the whole event goes to the dead-letter topic, so a typo is seen, not
            silently dropped.
    """
    if not decls:
        return ()
    if len(decls) > MAX_EXPECT:
        raise DecodeError("bad-expectation", f"{where}: more than {MAX_EXPECT} bets")
    out: dict[str, Expectation] = {}
    for i, d in enumerate(decls):
        try:
            e = parse_expectation(d.kpi, d.change)
        except ValueError as exc:
            raise DecodeError("bad-expectation", f"{where}[{i}]: {exc}") from None
        if e.kpi in out:
            raise DecodeError("bad-expectation", f"{where}[{i}]: kpi {e.kpi!r} declared twice")
        out[e.kpi] = e
    return tuple(out.values())


def expect_dicts(bets: tuple[Expectation, ...]) -> list[dict[str, str]]:
    """Bets as ``customData.valueloop.expect`` (the inverse of `expectations`)."""
    return [{"kpi": e.kpi, "change": format_change(e)} for e in bets]


LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL_KEY)]
LabelValue = Annotated[str, StringConstraints(max_length=MAX_LABEL_VALUE)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]


class Ref(BaseModel):
    """A reference to another subject (environment, repository, service, change)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: NonEmpty
    source: str | None = None


class Context(BaseModel):
    """CDEvents ``context``; ``type`` is narrowed by each contract."""

    model_config = STRICT

    version: SpecVersion | None = Field(
        default=None, description="Spec version (CDEvents 0.3, 0.4)."
    )
    specversion: SpecVersion | None = Field(
        default=None, description="Spec version (CDEvents 0.5)."
    )
    id: NonEmpty
    source: NonEmpty
    type: NonEmpty
    timestamp: Timestamp
    schemaUri: str | None = None
    chainId: str | None = Field(
        default=None, description="Chain of linked events (CDEvents 0.4.1, 0.5)."
    )
    chain_id: str | None = Field(
        default=None, description="chainId as CDEvents 0.4.0 spells it (renamed in 0.4.1)."
    )
    links: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _one_spec_version(self) -> Context:
        if (self.version is None) == (self.specversion is None):
            raise ValueError(
                "exactly one of context.version (CDEvents 0.3, 0.4) and "
                "context.specversion (0.5) is required"
            )
        if self.chainId and self.chain_id and self.chainId != self.chain_id:
            raise ValueError("context.chainId and context.chain_id name different chains")
        return self

    @property
    def chain(self) -> str | None:
        """The chain id, whichever name it came under (``chainId`` or 0.4.0's ``chain_id``)."""
        return self.chainId or self.chain_id or None

    def linked_ids(self) -> tuple[str, ...]:
        """Context ids of the events this one links to (CDEvents links: ``target`` of a
        RELATION, ``from`` of a PATH or END), in order, without duplicates, at most MAX_LINKS."""
        found: dict[str, None] = {}
        for link in self.links or ():
            for end in ("target", "from"):
                ref = link.get(end)
                cid = ref.get("contextId") if isinstance(ref, dict) else None
                if isinstance(cid, str) and 0 < len(cid) <= MAX_LINK_ID:
                    found[cid] = None
        return tuple(found)[:MAX_LINKS]

    @property
    def seconds(self) -> float:
        """The event time as POSIX seconds."""
        return timestamp_seconds(self.timestamp)


class CloudEvent(BaseModel):
    """A structured-mode CloudEvent (JSON) carrying a CDEvent as ``data``."""

    model_config = ConfigDict(
        strict=True, extra="allow", frozen=True
    )  # extension attributes allowed

    specversion: Literal["1.0"]
    id: NonEmpty
    source: NonEmpty
    type: NonEmpty
    time: Timestamp | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: dict[str, Any]


def check_subject_type(subject_type: str | None, event: EventType) -> None:
    """Raise DecodeError when a 0.3/0.4 ``subject.type`` names another subject than the event's."""
    if subject_type is not None and subject_type != event.subject_type:
        raise DecodeError(
            "schema-invalid",
            f"subject.type: {subject_type!r} does not match event {event.name} "
            f"(expects {event.subject_type!r})",
        )


def context_dict(
    event: EventType, spec_version: str, event_id: str, seconds: float
) -> dict[str, Any]:
    """The ``context`` of an event valueloop encodes, in the shape ``spec_version`` defines."""
    key = "specversion" if spec_line(spec_version) == "0.5" else "version"
    return {
        key: spec_version,
        "id": event_id,
        "source": SOURCE,
        "type": event.type_for(spec_version),
        "timestamp": format_timestamp(seconds),
    }


def add_chain(
    context: dict[str, Any], spec_version: str, chain_id: str | None, links: tuple[str, ...] = ()
) -> None:
    """Write a chain id and links into an encoded ``context`` as ``spec_version`` spells them
    (``chain_id`` in 0.4.0, ``chainId`` from 0.4.1; links as PATH links). 0.3 has neither."""
    if spec_line(spec_version) == "0.3":
        return
    if chain_id is not None:
        context["chain_id" if spec_version.startswith("0.4.0") else "chainId"] = chain_id
    if links:
        context["links"] = [{"linkType": "PATH", "from": {"contextId": cid}} for cid in links]


def service_name(*candidates: str | None) -> str:
    """The first usable service name of ``candidates`` (the service-name rule, in order).

    Each module passes its candidates in the order of the one rule (see README "Service names"):
    ``customData.valueloop.service``; the service the event names (a service subject's id, an
    incident's ``content.service``); the Kafka key or CloudEvents ``partitionkey``; the name of
    the artifact's package URL; the change's repository, ``subject.source``, ``context.source``.
    Paths are reduced to their last segment by the caller. Empty when none is usable.
    """
    return next((c for c in candidates if c), "")


def subject_dict(
    event: EventType, spec_version: str, subject_id: str, content: dict[str, Any]
) -> dict[str, Any]:
    """The ``subject`` of an encoded event; ``type`` only where the spec has it (0.3, 0.4)."""
    out: dict[str, Any] = {"id": subject_id}
    if spec_line(spec_version) != "0.5":
        out["type"] = event.subject_type
    out["content"] = content
    return out


def finite(value: float | None) -> float | None:
    """``float(value)`` when finite, else None (JSON has no NaN or infinity)."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None
