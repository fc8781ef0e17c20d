"""Value-ledger contract: what a release (or feature work item) cost and what it delivered."""

from __future__ import annotations

from typing import Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field

from stream_app.core.ledger import EntryValue, LedgerEntry
from stream_app.core.types import Verdict
from stream_app.events import Timestamp, finite, format_timestamp

LEDGER_SCHEMA_VERSION = 1
Outcome = Literal["met", "partly-met", "not-met", "went-the-other-way", "inconclusive", "pending"]


class LedgerCost(BaseModel):
    """Work the entry's items took, in seconds of event time."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    items: int = Field(ge=0, description="Work items the release shipped (1 for an item entry).")
    item_ids: list[str] = Field(default_factory=list)
    active_seconds: float = Field(description="Active (worked-on) time in flow stages.")
    wait_seconds: float = Field(description="Waiting time in flow stages.")
    flow_seconds: float = Field(description="Flow time: first flow stage to production.")


class LedgerKpi(BaseModel):
    """The latest final impact verdict of one KPI of the release."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kpi: str
    verdict: Literal["improved", "degraded", "neutral", "inconclusive", "confounded"]
    change: float | None = Field(default=None, description="Relative change (0.05 = +5 %).")
    ci_low: float | None = Field(default=None, description="The change's 95 % interval, low end.")
    ci_high: float | None = Field(default=None, description="Its high end.")
    critical: bool


class LedgerExpectation(BaseModel):
    """A declared expected benefit and whether the verdicts met it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kpi: str
    direction: Literal["up", "down"]
    change: float = Field(gt=0, description="Expected relative size (0.03 = 3 %).")
    outcome: Outcome


class LedgerDelivered(BaseModel):
    """A KPI's delivered change in business units a day: baseline level x relative change."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kpi: str
    unit: str = Field(description="Unit of the level, per day (orders, revenue, ...).")
    level_per_day: float = Field(description="The judge's baseline level, units a day.")
    change: float = Field(description="Relative change (0.05 = +5 %).")
    per_day: float = Field(description="Delivered units a day (level x change).")
    per_day_low: float | None = Field(default=None, description="level x the interval's low end.")
    per_day_high: float | None = Field(default=None, description="level x its high end.")
    expected_per_day: float | None = Field(
        default=None, description="The declared expectation in units a day (signed)."
    )


class LedgerValue(BaseModel):
    """What the entry cost (hours, money) and delivered (units a day), and value per hour."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    active_hours: float = Field(description="Active engineering time of its items.")
    total_hours: float = Field(description="Active + waiting time of its items in the flow.")
    cost: float | None = Field(
        default=None, description="active_hours x the configured cost rate (money)."
    )
    delivered: list[LedgerDelivered] = Field(default_factory=list)
    headline_kpi: str | None = Field(
        default=None, description="The KPI the entry is ranked by (first declared, else moved)."
    )
    value_per_hour: float | None = Field(
        default=None, description="Headline units a day per active engineering hour."
    )


class LedgerEvent(BaseModel):
    """One value-ledger entry; a later event for the same release (and item) supersedes it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="LedgerEntry")

    v: Literal[1] = Field(default=1, description="Schema version.")
    kind: Literal["release", "item"]
    release_id: str | None = Field(description="context.id of the release (null: not shipped).")
    item_id: str | None = Field(default=None, description="The work item of an item entry.")
    service: str
    version: str
    release_time: Timestamp | None = None
    cost: LedgerCost
    kpis: list[LedgerKpi] = Field(default_factory=list)
    expectations: list[LedgerExpectation] = Field(default_factory=list)
    outcome: Outcome | None = Field(
        default=None, description="Over all expectations; null when none was declared."
    )
    degraded: bool = Field(description="Some KPI's final verdict is degraded.")
    summary: str
    value: LedgerValue | None = Field(default=None, description="Cost and delivered value.")


def ledger_event(entry: LedgerEntry) -> LedgerEvent:
    """Flatten a ledger entry into the contract (numbers as plain, finite Python floats)."""
    c = entry.cost
    return LedgerEvent(
        kind="item" if entry.item_id is not None else "release",
        release_id=entry.release_id,
        item_id=entry.item_id,
        service=entry.service,
        version=entry.version,
        release_time=None if entry.time is None else format_timestamp(entry.time),
        cost=LedgerCost(
            items=int(c.items),
            item_ids=list(c.item_ids),
            active_seconds=float(c.active_seconds),
            wait_seconds=float(c.wait_seconds),
            flow_seconds=float(c.flow_seconds),
        ),
        kpis=[
            LedgerKpi(
                kpi=k.kpi,
                # KpiOutcome keeps the verdict as a plain str; it came from a Verdict.
                verdict=cast(Verdict, k.verdict),
                change=finite(k.change),
                ci_low=finite(k.ci_low),
                ci_high=finite(k.ci_high),
                critical=bool(k.critical),
            )
            for k in entry.kpis
        ],
        expectations=[
            LedgerExpectation(kpi=e.kpi, direction=e.direction, change=e.change, outcome=o)
            for e, o in entry.expectations
        ],
        outcome=entry.outcome,
        degraded=entry.degraded,
        summary=entry.summary,
        value=None if entry.value is None else ledger_value(entry.value),
    )


def ledger_value(v: EntryValue) -> LedgerValue:
    """An entry's value in the contract (non-finite numbers as null)."""
    return LedgerValue(
        active_hours=float(v.active_hours),
        total_hours=float(v.total_hours),
        cost=finite(v.cost),
        delivered=[
            LedgerDelivered(
                kpi=d.kpi,
                unit=d.unit,
                level_per_day=float(d.level_per_day),
                change=float(d.change),
                per_day=float(d.per_day),
                per_day_low=finite(d.per_day_low),
                per_day_high=finite(d.per_day_high),
                expected_per_day=finite(d.expected_per_day),
            )
            for d in v.delivered
        ],
        headline_kpi=None if v.headline is None else v.headline.kpi,
        value_per_hour=finite(v.value_per_hour),
    )


def encode_ledger(entry: LedgerEntry) -> bytes:
    """A ledger entry as the ledger-topic JSON (`LedgerEvent`)."""
    return orjson.dumps(ledger_event(entry).model_dump())
