"""Workflow contracts: CDEvents change, pipelinerun, build, testsuiterun, artifact and work items.

Mapping of the CDEvents to `WorkflowEvent` (``source_type``, ``stage``, ``action``, ``state``,
``outcome``):

========================  ============  ============  =========  =======  ===============
CDEvent                   source_type   stage         action     state    outcome
========================  ============  ============  =========  =======  ===============
change.created            change        review        created    -        -
change.updated            change        review        started    -        updated
change.reviewed           change        review        started    -        reviewed
change.merged             change        review        merged     -        -
change.abandoned          change        review        finished   -        abandoned
pipelinerun.queued        pipelinerun   pipelineName  queued     waiting  -
pipelinerun.started       pipelinerun   pipelineName  started    active   -
pipelinerun.finished      pipelinerun   pipelineName  finished   -        content.outcome
build.queued/started/...  build         build         (same)     (same)   -
testsuiterun.queued/...   testsuiterun  test          (same)     (same)   content.outcome
artifact.packaged         artifact      artifact      created    -        -
artifact.published        artifact      artifact      published  -        -
========================  ============  ============  =========  =======  ===============

The pipeline's name is its stage ("pipeline" when the event has none). Test-suite outcomes are
normalised to the 0.5 words (``pass`` -> ``success``, ``fail`` -> ``failure``). id is
``context.id``, time ``context.timestamp``, item_id ``subject.id``. ``customData.valueloop`` may
set ``service``, ``stage``, ``state`` (an explicit null clears the default), ``itemType`` and
``commits`` (the spec has no commit field in any of these subjects). None of these subjects
names a service: without ``customData.valueloop.service`` the service is the message's Kafka key
(or CloudEvents ``partitionkey``), else the artifact purl's name (``subject.id`` of artifact
events, ``content.artifactId`` of build.finished), else the last path segment of the change's
``repository.id``, ``subject.source``, ``context.source``. ``context.chainId`` (0.4.0:
``chain_id``) is kept: a deployment in the same chain deploys the change (lead time).

A work item moving between stages is the custom CDEvent
``dev.cdeventsx.valueloop-workitem.staged.0.1.0`` with subject content ``{itemId, itemType
(feature|defect|risk|debt), stage, action (entered|left), state (active|waiting, optional),
service}``; it maps one to one (source_type ``workitem``).

Encoding writes the fields the spec requires even where `WorkflowEvent` has no value for them,
with placeholders: ``urn:valueloop:<subject>:<item id>`` URLs, environment ``unknown``,
change ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from stream_app.events import (
    EVENT_TYPES,
    OPEN,
    STRICT,
    WORKITEM_EVENT,
    Context,
    EventType,
    ExpectDecl,
    Name,
    NonEmpty,
    Ref,
    Stage,
    add_chain,
    check_name,
    check_subject_type,
    context_dict,
    expect_dicts,
    expectations,
    last_segment,
    purl_parts,
    service_name,
    spec_line,
    subject_dict,
    types_pattern,
)
from stream_app.events.model import ItemType, WorkflowEvent

Action = Literal[
    "entered", "left", "started", "finished", "queued", "merged", "created", "published"
]
State = Literal["active", "waiting"]
SourceType = Literal["change", "pipelinerun", "build", "testsuiterun", "artifact"]

# event name -> (source_type, action, outcome); finished runs read their outcome from the content.
_MAP: dict[str, tuple[SourceType, Action, str | None]] = {
    "change.created": ("change", "created", None),
    "change.updated": ("change", "started", "updated"),
    "change.reviewed": ("change", "started", "reviewed"),
    "change.merged": ("change", "merged", None),
    "change.abandoned": ("change", "finished", "abandoned"),
    "pipelinerun.queued": ("pipelinerun", "queued", None),
    "pipelinerun.started": ("pipelinerun", "started", None),
    "pipelinerun.finished": ("pipelinerun", "finished", None),
    "build.queued": ("build", "queued", None),
    "build.started": ("build", "started", None),
    "build.finished": ("build", "finished", None),
    "testsuiterun.queued": ("testsuiterun", "queued", None),
    "testsuiterun.started": ("testsuiterun", "started", None),
    "testsuiterun.finished": ("testsuiterun", "finished", None),
    "artifact.packaged": ("artifact", "created", None),
    "artifact.published": ("artifact", "published", None),
}
WORKFLOW_CDEVENTS = tuple(_MAP)
_OUTCOME_FROM_CONTENT = frozenset({"pipelinerun.finished", "testsuiterun.finished"})
_DEFAULT_STAGE: dict[str, str] = {
    "change": "review",
    "pipelinerun": "pipeline",
    "build": "build",
    "testsuiterun": "test",
    "artifact": "artifact",
}
_RUNS = frozenset({"pipelinerun", "build", "testsuiterun"})
_DEFAULT_STATE: dict[str, State] = {"queued": "waiting", "started": "active"}
# Spec 0.3/0.4 test-suite outcomes -> the 0.5 words, and back.
_TEST_OUTCOME = {"pass": "success", "fail": "failure"}
_TEST_OUTCOME_OLD = {"success": "pass", "failure": "fail", "cancel": "cancel", "error": "error"}


class WorkflowExtension(BaseModel):
    """``customData.valueloop`` of a workflow CDEvent."""

    model_config = STRICT

    service: Name | None = Field(default=None, description="Value stream (service or product).")
    stage: Stage | None = Field(
        default=None, description="Overrides the default stage of the event type."
    )
    state: State | None = None
    itemType: ItemType | None = None
    commits: list[NonEmpty] = Field(default_factory=list)


class WorkflowCustomData(BaseModel):
    """``customData`` of a workflow CDEvent."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    valueloop: WorkflowExtension | None = None


class WorkflowContext(Context):
    """Context of the workflow CDEvents."""

    type: str = Field(pattern=types_pattern(*WORKFLOW_CDEVENTS))


class WorkflowContent(BaseModel):
    """The subject content fields valueloop reads (others are accepted and ignored)."""

    model_config = OPEN

    repository: Ref | None = None  # change
    pipelineName: str | None = None  # pipelinerun
    outcome: str | None = None  # pipelinerun.finished, testsuiterun.finished
    artifactId: str | None = None  # build.finished


class WorkflowSubject(BaseModel):
    """The subject of a workflow CDEvent."""

    model_config = STRICT

    id: NonEmpty
    source: str | None = None
    type: Literal["change", "pipelineRun", "build", "testSuiteRun", "artifact"] | None = Field(
        default=None, description="CDEvents 0.3/0.4 only."
    )
    content: WorkflowContent


class WorkflowCDEvent(BaseModel):
    """A CDEvents change, pipelinerun, build, testsuiterun or artifact event (spec 0.3-0.5)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="WorkflowCDEvent")

    context: WorkflowContext
    subject: WorkflowSubject
    customData: WorkflowCustomData | str | None = None
    customDataContentType: str | None = None

    def extension(self) -> WorkflowExtension:
        """``customData.valueloop``, empty when absent."""
        cd = self.customData
        if isinstance(cd, WorkflowCustomData) and cd.valueloop is not None:
            return cd.valueloop
        return WorkflowExtension()


# ---------------------------------------------------------------------------- work item
class WorkItemExtension(BaseModel):
    """``customData.valueloop`` of a work-item event."""

    model_config = STRICT

    commits: list[NonEmpty] = Field(default_factory=list)
    expect: list[ExpectDecl] = Field(
        default_factory=list,
        description='The item\'s bets: [{"kpi": "conversion", "change": "+3%"}] (feature id -> '
        "expectation); the latest declaration of an item wins.",
    )


class WorkItemCustomData(BaseModel):
    """``customData`` of a work-item event."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    valueloop: WorkItemExtension | None = None


class WorkItemContext(Context):
    """Context of the work-item custom event."""

    type: str = Field(pattern=types_pattern(WORKITEM_EVENT))


class WorkItemContent(BaseModel):
    """Subject content of a work-item stage change."""

    model_config = STRICT

    itemId: NonEmpty
    itemType: ItemType
    stage: Stage
    action: Literal["entered", "left"]
    state: State | None = None
    service: Name
    outcome: str | None = Field(
        default=None,
        max_length=64,
        description='How the item left the stage, e.g. "deployed" when it reached production.',
    )


class WorkItemSubject(BaseModel):
    """The ``valueloop-workitem`` subject."""

    model_config = STRICT

    id: NonEmpty
    source: str | None = None
    type: Literal["valueloop-workitem"] | None = Field(
        default=None, description="CDEvents 0.3/0.4 only."
    )
    content: WorkItemContent


class WorkItemEvent(BaseModel):
    """Custom CDEvent ``dev.cdeventsx.valueloop-workitem.staged.0.1.0``: an item changed stage."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="WorkItemStageEvent")

    context: WorkItemContext
    subject: WorkItemSubject
    customData: WorkItemCustomData | str | None = None
    customDataContentType: str | None = None


# ---------------------------------------------------------------------------- decode
def _default_state(source_type: str, action: str) -> State | None:
    return _DEFAULT_STATE.get(action) if source_type in _RUNS else None


def _default_service(m: WorkflowCDEvent, event: EventType, key: str | None) -> str:
    c = m.subject.content
    purl = None
    if event.subject == "artifact":
        purl = purl_parts(m.subject.id)
    elif event.name == "build.finished" and c.artifactId:
        purl = purl_parts(c.artifactId)
    repository = c.repository.id if event.subject == "change" and c.repository else None
    return service_name(
        key,
        purl[0] if purl else None,
        last_segment(repository) if repository else None,
        last_segment(m.subject.source) if m.subject.source else None,
        last_segment(m.context.source),
    )


def workflow_from_cdevent(
    doc: Mapping[str, Any], event: EventType, key: str | None = None
) -> WorkflowEvent:
    """Validate a workflow CDEvent document (or a work-item event) and normalise it.

    ``key`` is the message's Kafka key (or ``partitionkey``): the service when
    ``customData.valueloop.service`` does not name it (these subjects have no service field).

    Raises:
        pydantic.ValidationError: the document does not match the contract.
        DecodeError: it matches but names no usable service or stage.
    """
    if event.name == WORKITEM_EVENT:
        return _workitem(WorkItemEvent.model_validate(doc), event)
    m = WorkflowCDEvent.model_validate(doc)
    check_subject_type(m.subject.type, event)
    ext = m.extension()
    source_type, action, outcome = _MAP[event.name]
    c = m.subject.content
    if event.name in _OUTCOME_FROM_CONTENT and c.outcome is not None:
        outcome = (
            _TEST_OUTCOME.get(c.outcome, c.outcome) if source_type == "testsuiterun" else c.outcome
        )
    stage = ext.stage
    if stage is None and source_type == "pipelinerun" and c.pipelineName:
        stage = c.pipelineName
    return WorkflowEvent(
        id=m.context.id,
        time=m.context.seconds,
        service=check_name(ext.service or _default_service(m, event, key), "service"),
        item_id=m.subject.id,
        item_type=ext.itemType,
        stage=check_name(stage or _DEFAULT_STAGE[source_type], "stage (pipelineName)", 64),
        action=action,
        # An explicit "state": null in customData means "no state"; absent means the default.
        state=ext.state if "state" in ext.model_fields_set else _default_state(source_type, action),
        source_type=source_type,
        commits=tuple(ext.commits),
        outcome=outcome,
        chain_id=m.context.chain,
    )


def _workitem(m: WorkItemEvent, event: EventType) -> WorkflowEvent:
    check_subject_type(m.subject.type, event)
    c = m.subject.content
    cd = m.customData
    ext = cd.valueloop if isinstance(cd, WorkItemCustomData) else None
    commits = ext.commits if ext else []
    expect = expectations(ext.expect, "customData.valueloop.expect") if ext else ()
    return WorkflowEvent(
        id=m.context.id,
        time=m.context.seconds,
        service=c.service,
        item_id=c.itemId,
        item_type=c.itemType,
        stage=c.stage,
        action=c.action,
        state=c.state,
        source_type="workitem",
        commits=tuple(commits),
        outcome=c.outcome,
        chain_id=m.context.chain,
        expect=expect,
    )


# ---------------------------------------------------------------------------- encode
def _event_name(e: WorkflowEvent) -> str:
    """The CDEvent that carries ``e``, or ValueError when none does."""
    if e.source_type == "workitem":
        if e.action in ("entered", "left") and e.item_type is not None:
            return WORKITEM_EVENT
    else:
        for name, (source_type, action, outcome) in _MAP.items():
            if (source_type, action) != (e.source_type, e.action):
                continue
            if name in _OUTCOME_FROM_CONTENT:
                if (
                    name == "pipelinerun.finished"
                    or e.outcome is None
                    or e.outcome in _TEST_OUTCOME_OLD
                ):
                    return name
            elif outcome == e.outcome:
                return name
    raise ValueError(
        f"no CDEvent carries a {e.source_type} event with action {e.action!r} "
        f"and outcome {e.outcome!r}"
    )


def workflow_to_cdevent(e: WorkflowEvent, spec_version: str) -> dict[str, Any]:
    """The CDEvent document of a workflow event.

    Raises:
        ValueError: no CDEvent (standard or the work-item event) carries this combination of
            source type, action and outcome.
    """
    name = _event_name(e)
    event = EVENT_TYPES[name]
    if name == WORKITEM_EVENT:
        return _workitem_to_cdevent(e, event, spec_version)
    source_type = cast(SourceType, e.source_type)
    placeholder = f"urn:valueloop:{event.subject}:{quote(e.item_id, safe='')}"
    line = spec_line(spec_version)
    content: dict[str, Any] = {}
    ext: dict[str, Any] = {"service": e.service}
    default_stage = _DEFAULT_STAGE[source_type]
    if source_type == "pipelinerun":
        content["pipelineName"] = e.stage
        content["uri" if line == "0.5" else "url"] = placeholder
        if e.outcome is not None:
            content["outcome"] = e.outcome
        default_stage = e.stage
    elif source_type == "testsuiterun":
        content["environment"] = {"id": "unknown"}
        if e.outcome is not None:
            content["outcome"] = e.outcome if line == "0.5" else _TEST_OUTCOME_OLD[e.outcome]
    elif name == "artifact.packaged":
        content["change"] = {"id": "unknown"}
    if e.stage != default_stage:
        ext["stage"] = e.stage
    if e.state != _default_state(source_type, e.action):
        ext["state"] = e.state
    if e.item_type is not None:
        ext["itemType"] = e.item_type
    if e.commits:
        ext["commits"] = list(e.commits)
    context = context_dict(event, spec_version, e.id, e.time)
    add_chain(context, spec_version, e.chain_id)
    return {
        "context": context,
        "subject": subject_dict(event, spec_version, e.item_id, content),
        "customData": {"valueloop": ext},
    }


def _workitem_to_cdevent(e: WorkflowEvent, event: EventType, spec_version: str) -> dict[str, Any]:
    content: dict[str, Any] = {
        "itemId": e.item_id,
        "itemType": e.item_type,
        "stage": e.stage,
        "action": e.action,
        "service": e.service,
    }
    if e.state is not None:
        content["state"] = e.state
    if e.outcome is not None:
        content["outcome"] = e.outcome
    doc: dict[str, Any] = {
        "context": context_dict(event, spec_version, e.id, e.time),
        "subject": subject_dict(event, spec_version, e.item_id, content),
    }
    add_chain(doc["context"], spec_version, e.chain_id)
    ext: dict[str, Any] = {}
    if e.commits:
        ext["commits"] = list(e.commits)
    if e.expect:
        ext["expect"] = expect_dicts(e.expect)
    if ext:
        doc["customData"] = {"valueloop": ext}
    return doc
