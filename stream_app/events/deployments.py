"""Release contracts: CDEvents service deployed/upgraded/rolledback and the flag-change event.

How a ``service.*`` CDEvent becomes a `Release`:

- id: ``context.id``; time: ``context.timestamp``; kind: the predicate; environment:
  ``subject.content.environment.id`` (as is).
- service: ``customData.valueloop.service`` when present, else ``subject.id`` with any leading path
  stripped. The spec's examples for the service subject id are ``service/myapp`` and
  ``daemonset/myapp`` (and ``mySubject123`` in its conformance payloads), i.e. the service's name
  is the last path segment.
- version: ``customData.valueloop.version``, else the version of the package URL in
  ``subject.content.artifactId`` (``pkg:oci/app@v1.2.3`` -> ``v1.2.3``,
  ``pkg:oci/myapp@sha256%3A0b31...`` -> ``sha256:0b31...``), else the artifact id itself when it
  is a bare digest; anything else is rejected: a release without a version cannot be judged.
- commits / change ids / scope: ``customData.valueloop.{commits,changeIds,scope}``.

A feature-flag change is the custom CDEvent ``dev.cdeventsx.valueloop-flag.changed.0.1.0`` with
subject content ``{flagKey, service, variation, rolloutPercent, environment?}``; it becomes
``Release(kind="flag", version=f"{flagKey}={variation}@{rolloutPercent:g}%")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stream_app.errors import DecodeError
from stream_app.events import (
    EVENT_TYPES,
    FLAG_EVENT,
    OPEN,
    STRICT,
    Context,
    EventType,
    ExpectDecl,
    Labels,
    Name,
    NonEmpty,
    Ref,
    add_chain,
    artifact_version,
    check_name,
    check_subject_type,
    context_dict,
    expect_dicts,
    expectations,
    last_segment,
    purl,
    subject_dict,
    types_pattern,
)
from stream_app.events.model import Release

SERVICE_EVENTS = ("service.deployed", "service.upgraded", "service.rolledback")


class ReleaseExtension(BaseModel):
    """``customData.valueloop`` of a release: what CDEvents has no field for."""

    model_config = STRICT

    service: Name | None = Field(default=None, description="Service name; overrides subject.id.")
    version: NonEmpty | None = Field(
        default=None, description="Version; overrides the artifactId purl."
    )
    commits: list[NonEmpty] = Field(
        default_factory=list, description="Commit shas in this release."
    )
    changeIds: list[NonEmpty] = Field(
        default_factory=list, description="Change / pull request ids."
    )
    scope: Labels = Field(
        default_factory=dict, description="Partial release scope, e.g. {'region': 'eu'}."
    )
    expect: list[ExpectDecl] = Field(
        default_factory=list,
        description='Bets: [{"kpi": "conversion", "change": "+3%"}]; a bad one dead-letters '
        "the event (bad-expectation).",
    )


class ReleaseCustomData(BaseModel):
    """``customData``: other tools' keys are kept out of the way; ``valueloop`` is ours."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    valueloop: ReleaseExtension | None = None


class DeploymentContext(Context):
    """Context of a service deployed / upgraded / rolledback event."""

    type: str = Field(pattern=types_pattern(*SERVICE_EVENTS))


class ServiceContent(BaseModel):
    """Subject content of the service events."""

    model_config = OPEN

    environment: Ref
    artifactId: NonEmpty


class ServiceSubject(BaseModel):
    """The ``service`` subject."""

    model_config = STRICT

    id: NonEmpty
    source: str | None = None
    type: Literal["service"] | None = Field(default=None, description="CDEvents 0.3/0.4 only.")
    content: ServiceContent


class DeploymentCDEvent(BaseModel):
    """A CDEvents service.deployed / service.upgraded / service.rolledback event (spec 0.3-0.5)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="DeploymentCDEvent")

    context: DeploymentContext
    subject: ServiceSubject
    customData: ReleaseCustomData | str | None = None
    customDataContentType: str | None = None

    def extension(self) -> ReleaseExtension:
        """``customData.valueloop``, empty when absent."""
        cd = self.customData
        if isinstance(cd, ReleaseCustomData) and cd.valueloop is not None:
            return cd.valueloop
        return ReleaseExtension()


# ---------------------------------------------------------------------------- flag change
class FlagExtension(BaseModel):
    """``customData.valueloop`` of a flag change."""

    model_config = STRICT

    commits: list[NonEmpty] = Field(default_factory=list)
    changeIds: list[NonEmpty] = Field(default_factory=list)
    scope: Labels = Field(
        default_factory=dict, description="Targeting scope, e.g. {'region': 'eu'}."
    )
    expect: list[ExpectDecl] = Field(
        default_factory=list, description='Bets: [{"kpi": "conversion", "change": "+3%"}].'
    )


class FlagCustomData(BaseModel):
    """``customData`` of a flag change."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    valueloop: FlagExtension | None = None


class FlagContext(Context):
    """Context of the flag-change custom event."""

    type: str = Field(pattern=types_pattern(FLAG_EVENT))


class FlagContent(BaseModel):
    """Subject content of a flag change."""

    model_config = STRICT

    flagKey: NonEmpty
    service: Name
    variation: NonEmpty = Field(description="The variation now served, e.g. 'on' or 'blue'.")
    rolloutPercent: float = Field(
        ge=0, le=100, allow_inf_nan=False, description="Share of traffic, 0-100."
    )
    environment: NonEmpty = "production"


class FlagSubject(BaseModel):
    """The ``valueloop-flag`` subject."""

    model_config = STRICT

    id: NonEmpty
    source: str | None = None
    type: Literal["valueloop-flag"] | None = Field(
        default=None, description="CDEvents 0.3/0.4 only."
    )
    content: FlagContent


class FlagChangeEvent(BaseModel):
    """Custom CDEvent ``dev.cdeventsx.valueloop-flag.changed.0.1.0``: a feature flag changed."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="FlagChangeEvent")

    context: FlagContext
    subject: FlagSubject
    customData: FlagCustomData | str | None = None
    customDataContentType: str | None = None

    def extension(self) -> FlagExtension:
        """``customData.valueloop``, empty when absent."""
        cd = self.customData
        if isinstance(cd, FlagCustomData) and cd.valueloop is not None:
            return cd.valueloop
        return FlagExtension()


def flag_version(flag_key: str, variation: str, rollout_percent: float) -> str:
    """The version of a flag release: ``"<flag>=<variation>@<pct>%"``, e.g. ``"new-ui=on@25%"``."""
    return f"{flag_key}={variation}@{rollout_percent:g}%"


# ---------------------------------------------------------------------------- decode / encode
def release_from_cdevent(
    doc: Mapping[str, Any], event: EventType, key: str | None = None
) -> Release:
    """Validate a release CDEvent document and normalise it.

    Args:
        doc: the parsed CDEvent (``context``, ``subject``, optional ``customData``).
        event: its registered type (a ``service.*`` event or the flag change).
        key: the message's Kafka key (or ``partitionkey``); unused, as a release always names
            its service (subject id, or the flag's content.service), which comes first.

    Raises:
        pydantic.ValidationError: the document does not match the contract.
        DecodeError: it matches but no service or version can be derived.
    """
    if event.name == FLAG_EVENT:
        return _flag_release(FlagChangeEvent.model_validate(doc))
    m = DeploymentCDEvent.model_validate(doc)
    check_subject_type(m.subject.type, event)
    ext = m.extension()
    service = check_name(ext.service or last_segment(m.subject.id), "service (subject.id)")
    version = ext.version or artifact_version(m.subject.content.artifactId)
    if not version:
        raise DecodeError(
            "schema-invalid",
            "subject.content.artifactId: no version in "
            f"{m.subject.content.artifactId[:120]!r}; use a purl with @version "
            "(pkg:oci/app@v1.2.3) or set customData.valueloop.version",
        )
    kind: Literal["deployed", "upgraded", "rolledback"] = event.predicate  # type: ignore[assignment]
    return Release(
        id=m.context.id,
        service=service,
        version=version,
        time=m.context.seconds,
        kind=kind,
        environment=m.subject.content.environment.id,
        commits=tuple(ext.commits),
        change_ids=tuple(ext.changeIds),
        scope=dict(ext.scope),
        chain_id=m.context.chain,
        links=m.context.linked_ids(),
        expect=expectations(ext.expect, "customData.valueloop.expect"),
    )


def _flag_release(m: FlagChangeEvent) -> Release:
    check_subject_type(m.subject.type, EVENT_TYPES[FLAG_EVENT])
    c = m.subject.content
    ext = m.extension()
    return Release(
        id=m.context.id,
        service=c.service,
        version=flag_version(c.flagKey, c.variation, c.rolloutPercent),
        time=m.context.seconds,
        kind="flag",
        environment=c.environment,
        commits=tuple(ext.commits),
        change_ids=tuple(ext.changeIds),
        flag_key=c.flagKey,
        rollout_percent=float(c.rolloutPercent),
        scope=dict(ext.scope),
        chain_id=m.context.chain,
        links=m.context.linked_ids(),
        expect=expectations(ext.expect, "customData.valueloop.expect"),
    )


def _extension_dict(r: Release) -> dict[str, Any]:
    ext: dict[str, Any] = {}
    if r.commits:
        ext["commits"] = list(r.commits)
    if r.change_ids:
        ext["changeIds"] = list(r.change_ids)
    if r.scope:
        ext["scope"] = dict(r.scope)
    if r.expect:
        ext["expect"] = expect_dicts(r.expect)
    return ext


def release_to_cdevent(r: Release, spec_version: str) -> dict[str, Any]:
    """The CDEvent document of a release (the custom flag event for a flag change).

    Service and version travel in the spec's own fields (subject id, artifactId purl) and only go to
    ``customData.valueloop`` when those cannot carry them unchanged.

    Raises:
        ValueError: a flag release without flag key / rollout or whose version is not
            `flag_version` of them.
    """
    if r.kind == "flag":
        return _flag_to_cdevent(r, spec_version)
    event = EVENT_TYPES[f"service.{r.kind}"]
    ext = _extension_dict(r)
    if last_segment(r.service) != r.service:
        ext["service"] = r.service
    artifact = purl(last_segment(r.service) or "service", r.version)
    if artifact_version(artifact) != r.version:
        ext["version"] = r.version
    doc: dict[str, Any] = {
        "context": context_dict(event, spec_version, r.id, r.time),
        "subject": subject_dict(
            event,
            spec_version,
            r.service,
            {"environment": {"id": r.environment}, "artifactId": artifact},
        ),
    }
    add_chain(doc["context"], spec_version, r.chain_id, r.links)
    if ext:
        doc["customData"] = {"valueloop": ext}
    return doc


def _flag_to_cdevent(r: Release, spec_version: str) -> dict[str, Any]:
    if r.flag_key is None or r.rollout_percent is None:
        raise ValueError(f"flag release {r.id!r} needs flag_key and rollout_percent")
    prefix, suffix = f"{r.flag_key}=", f"@{r.rollout_percent:g}%"
    if not (r.version.startswith(prefix) and r.version.endswith(suffix)) or len(r.version) <= len(
        prefix
    ) + len(suffix):
        raise ValueError(f"flag release version {r.version!r} is not '<flag>=<variation>@<pct>%'")
    variation = r.version[len(prefix) : len(r.version) - len(suffix)]
    event = EVENT_TYPES[FLAG_EVENT]
    content: dict[str, Any] = {
        "flagKey": r.flag_key,
        "service": r.service,
        "variation": variation,
        "rolloutPercent": r.rollout_percent,
    }
    if r.environment != "production":
        content["environment"] = r.environment
    doc: dict[str, Any] = {
        "context": context_dict(event, spec_version, r.id, r.time),
        "subject": subject_dict(event, spec_version, r.flag_key, content),
    }
    add_chain(doc["context"], spec_version, r.chain_id, r.links)
    ext = _extension_dict(r)
    if ext:
        doc["customData"] = {"valueloop": ext}
    return doc
