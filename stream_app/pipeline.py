"""Routes decoded events to the pure core; the same object serves the worker and offline replay."""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_app.codec import Decoded
from stream_app.core.catalog import Catalog
from stream_app.core.impact import ImpactEngine
from stream_app.core.types import VerdictRecord
from stream_app.events.model import KpiSample, Release

# Core outcomes that mean "this input cannot be used": the edge dead-letters it with this reason.
DEADLETTER_OUTCOMES = frozenset(
    {"unknown-stream", "out-of-scope", "invalid-value", "too-many-label-values"}
)


@dataclass(frozen=True, slots=True)
class Step:
    """What the core did with one accepted event.

    Attributes:
        records: verdicts produced (possibly none), in order.
        outcome: what happened to the event (e.g. "accepted", "late", "duplicate").
        service: the service the event belongs to (the state it touched).
    """

    records: list[VerdictRecord] = field(default_factory=list)
    outcome: str = "accepted"
    service: str = ""

    @property
    def rejected(self) -> bool:
        """Whether the core refused the event (it goes to the dead-letter topic)."""
        return self.outcome in DEADLETTER_OUTCOMES


class Pipeline:
    """Decoded event -> core -> verdicts. Holds no I/O; the caller emits what it returns."""

    def __init__(self, catalog: Catalog, *, alpha: float = 0.05) -> None:
        self.catalog = catalog
        self.engine = ImpactEngine(catalog, alpha=alpha)
        self.max_event_time = float("-inf")

    def handle(self, event: Decoded) -> Step:
        """Feed one accepted event to the core; returns what it produced."""
        self.max_event_time = max(self.max_event_time, event.time)
        if isinstance(event, KpiSample):
            outcome = self.engine.on_sample(event)
            records = self.engine.advance(event.service) if outcome == "accepted" else []
            return Step(records, outcome, event.service)
        if isinstance(event, Release):
            rel_outcome, records = self.engine.add_release(event)
            records = records + self.engine.advance(event.service)
            # A release for a service without KPIs is still a release (DORA counts it).
            return Step(
                records,
                "accepted" if rel_outcome == "out-of-scope" else str(rel_outcome),
                event.service,
            )
        return Step([], "accepted", event.service)
