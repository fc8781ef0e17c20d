"""Internal, normalised event shapes: what the core sees once CloudEvents/CDEvents details are gone.

Times are POSIX seconds (float, UTC) in event time. These are plain frozen dataclasses so the hot
path
(telemetry) stays cheap; the pydantic contracts in the sibling modules validate wire payloads and
normalise into these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ReleaseKind = Literal["deployed", "upgraded", "rolledback", "flag"]
ItemType = Literal["feature", "defect", "risk", "debt"]
IncidentAction = Literal["detected", "reported", "resolved"]


@dataclass(frozen=True, slots=True)
class Expectation:
    """A declared bet: a change should move ``kpi`` ``direction`` by ``change`` (0.03 = 3 %)."""

    kpi: str
    direction: Literal["up", "down"]
    change: float  # expected relative size, positive


def parse_expectation(kpi: object, change: object) -> Expectation:
    """A bet as declared on an event or the command line: ``kpi`` and a signed ``change``.

    ``change`` is a signed percentage string ("+3%", "-5%") or a signed fraction (0.03, "-0.05");
    the sign is the direction. Zero, a missing sign on a percentage, NaN and sizes of 1000 % or
    more are refused.

    Raises:
        ValueError: the declaration is not usable; the message says why.
    """
    if not isinstance(kpi, str) or not kpi.strip() or len(kpi) > 128:
        raise ValueError(f"kpi: expected a KPI name, got {kpi!r}")
    if isinstance(change, bool) or not isinstance(change, str | int | float):
        raise ValueError(f"change: expected '+3%' or a signed fraction, got {change!r}")
    if isinstance(change, str):
        text = change.strip()
        pct = text.endswith("%")
        body = text[:-1].strip() if pct else text
        if pct and body[:1] not in ("+", "-"):
            raise ValueError(f"change: {change!r} needs a sign: '+3%' (up) or '-3%' (down)")
        try:
            x = float(body) / (100.0 if pct else 1.0)
        except ValueError:
            raise ValueError(f"change: {change!r} is not a signed percentage") from None
    else:
        x = float(change)
    if not (x == x and 0 < abs(x) < 10.0):  # x == x: not NaN
        raise ValueError(f"change: {change!r} is not a non-zero size below 1000 %")
    return Expectation(kpi.strip(), "up" if x > 0 else "down", abs(x))


def format_change(e: Expectation) -> str:
    """The signed percentage of a bet, as declared: "+3%"."""
    return f"{'+' if e.direction == 'up' else '-'}{e.change * 100:g}%"


@dataclass(frozen=True, slots=True)
class Release:
    """A release of a service: a deployment, an upgrade, a rollback or a feature-flag change."""

    id: str  # source event id (CDEvents context.id), unique per release
    service: str
    version: str  # deployed version; for a flag change "<flag>=<variation>@<pct>%"
    time: float
    kind: ReleaseKind
    environment: str = "production"
    commits: tuple[str, ...] = ()  # commit shas / change ids carried by the deployment
    change_ids: tuple[str, ...] = ()
    flag_key: str | None = None
    rollout_percent: float | None = None
    # Scope of a partial release: e.g. {"region": "eu"} or {"version": "1.4.0"} for a canary.
    # Empty means the whole service.
    scope: dict[str, str] = field(default_factory=dict)
    chain_id: str | None = None  # CDEvents context chainId (0.4.0: chain_id)
    links: tuple[str, ...] = ()  # context ids of the events it links to (CDEvents links)
    expect: tuple[Expectation, ...] = ()  # bets declared on the event (customData)


@dataclass(frozen=True, slots=True)
class KpiSample:
    """One telemetry sample of a KPI stream (the high-volume event)."""

    service: str
    kpi: str  # the sample stream name, e.g. "orders", "sessions", "latency_ms"
    time: float
    value: float
    count: float = 1.0  # how many observations `value` sums (pre-aggregated producers)
    labels: dict[str, str] = field(default_factory=dict)
    id: str | None = None
    # The product (value stream) a product-level sample is measured for; None: its service's.
    product: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """A work item, change or pipeline moving through a value-stream stage."""

    id: str
    time: float
    service: str  # value stream (service or product)
    item_id: str  # work item / change / pipeline run id
    item_type: ItemType | None
    stage: str  # e.g. "review", "build", "test", "waiting-for-qa"
    action: Literal[
        "entered", "left", "started", "finished", "queued", "merged", "created", "published"
    ]
    state: Literal["active", "waiting"] | None = None
    source_type: str = (
        "workitem"  # change | pipelinerun | build | testsuiterun | artifact | workitem
    )
    commits: tuple[str, ...] = ()
    outcome: str | None = None
    chain_id: str | None = None  # CDEvents context chainId (0.4.0: chain_id)
    expect: tuple[Expectation, ...] = ()  # bets declared on a work item (customData)


@dataclass(frozen=True, slots=True)
class Incident:
    """An incident detected, reported or resolved for a service."""

    id: str
    incident_id: str  # subject id: the same across detected/resolved
    time: float
    service: str
    action: IncidentAction
    environment: str = "production"
    deployment_id: str | None = None  # explicit link to the release that caused it, when known
    change_ids: tuple[str, ...] = ()
    description: str | None = None
