"""Incident contract: CDEvents incident detected / reported / resolved (spec 0.3-0.5).

id is ``context.id``, incident_id ``subject.id`` (the same across an incident's events), time
``context.timestamp``, environment ``subject.content.environment.id``, description
``subject.content.description``. service: ``customData.valueloop.service``, else
``subject.content.service.id`` with any leading path stripped (``service/myapp`` -> ``myapp``), else
the message key (or CloudEvents ``partitionkey``), else the name of the ``content.artifactId``
package URL; an incident with none of these is rejected. deployment_id (the release that caused it):
``customData.valueloop.deploymentId``, else ``subject.content.artifactId``. change ids:
``customData.valueloop.changeIds``. Encoding an incident.reported writes the ticket URI the spec
requires as ``urn:valueloop:incident:<incident id>`` (`Incident` has no ticket).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from stream_app.errors import DecodeError
from stream_app.events import (
    EVENT_TYPES,
    OPEN,
    STRICT,
    Context,
    EventType,
    Name,
    NonEmpty,
    Ref,
    check_name,
    check_subject_type,
    context_dict,
    last_segment,
    purl_parts,
    service_name,
    subject_dict,
    types_pattern,
)
from stream_app.events.model import Incident, IncidentAction

INCIDENT_EVENTS = ("incident.detected", "incident.reported", "incident.resolved")


class IncidentExtension(BaseModel):
    """``customData.valueloop`` of an incident."""

    model_config = STRICT

    service: Name | None = Field(
        default=None, description="Affected service; overrides content.service."
    )
    deploymentId: NonEmpty | None = Field(
        default=None,
        description="context.id of the deployment that caused it; overrides content.artifactId.",
    )
    changeIds: list[NonEmpty] = Field(default_factory=list, description="Changes that caused it.")


class IncidentCustomData(BaseModel):
    """``customData`` of an incident."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    valueloop: IncidentExtension | None = None


class IncidentContext(Context):
    """Context of the incident events."""

    type: str = Field(pattern=types_pattern(*INCIDENT_EVENTS))


class IncidentContent(BaseModel):
    """Subject content of the incident events (fields valueloop does not read are ignored)."""

    model_config = OPEN

    environment: Ref
    service: Ref | None = None
    artifactId: NonEmpty | None = None
    description: str | None = None


class IncidentSubject(BaseModel):
    """The ``incident`` subject."""

    model_config = STRICT

    id: NonEmpty
    source: str | None = None
    type: Literal["incident"] | None = Field(default=None, description="CDEvents 0.3/0.4 only.")
    content: IncidentContent


class IncidentCDEvent(BaseModel):
    """A CDEvents incident.detected / incident.reported / incident.resolved event."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="IncidentCDEvent")

    context: IncidentContext
    subject: IncidentSubject
    customData: IncidentCustomData | str | None = None
    customDataContentType: str | None = None

    def extension(self) -> IncidentExtension:
        """``customData.valueloop``, empty when absent."""
        cd = self.customData
        if isinstance(cd, IncidentCustomData) and cd.valueloop is not None:
            return cd.valueloop
        return IncidentExtension()


def incident_from_cdevent(
    doc: Mapping[str, Any], event: EventType, key: str | None = None
) -> Incident:
    """Validate an incident CDEvent document and normalise it.

    Args:
        doc: the parsed CDEvent.
        event: its registered type.
        key: the message's Kafka key (or ``partitionkey``): the service when the event names none.

    Raises:
        pydantic.ValidationError: the document does not match the contract.
        DecodeError: it names no service (and has no key).
    """
    m = IncidentCDEvent.model_validate(doc)
    check_subject_type(m.subject.type, event)
    ext = m.extension()
    c = m.subject.content
    artifact = purl_parts(c.artifactId) if c.artifactId else None
    service = service_name(
        ext.service,
        last_segment(c.service.id) if c.service is not None else None,
        key,
        artifact[0] if artifact else None,
    )
    if not service:
        raise DecodeError(
            "schema-invalid",
            "subject.content.service: required to know the affected service "
            "(or a purl artifactId, a message key, or customData.valueloop.service)",
        )
    action: IncidentAction = event.predicate  # type: ignore[assignment]
    return Incident(
        id=m.context.id,
        incident_id=m.subject.id,
        time=m.context.seconds,
        service=check_name(service, "service"),
        action=action,
        environment=c.environment.id,
        deployment_id=ext.deploymentId or c.artifactId,
        change_ids=tuple(ext.changeIds),
        description=c.description,
    )


def incident_to_cdevent(i: Incident, spec_version: str) -> dict[str, Any]:
    """The CDEvent document of an incident."""
    event = EVENT_TYPES[f"incident.{i.action}"]
    content: dict[str, Any] = {"environment": {"id": i.environment}, "service": {"id": i.service}}
    if i.description is not None:
        content["description"] = i.description
    if i.action == "reported":
        content["ticketURI"] = f"urn:valueloop:incident:{quote(i.incident_id, safe='')}"
    ext: dict[str, Any] = {}
    if last_segment(i.service) != i.service:
        ext["service"] = i.service
    if i.deployment_id is not None:
        ext["deploymentId"] = i.deployment_id
    if i.change_ids:
        ext["changeIds"] = list(i.change_ids)
    doc: dict[str, Any] = {
        "context": context_dict(event, spec_version, i.id, i.time),
        "subject": subject_dict(event, spec_version, i.incident_id, content),
    }
    if ext:
        doc["customData"] = {"valueloop": ext}
    return doc
