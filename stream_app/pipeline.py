"""Routes decoded events to the pure core; the same object serves the worker and offline replay."""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_app.codec import Decoded
from stream_app.core.catalog import Catalog
from stream_app.core.dora import DoraTracker, dora_metric_samples
from stream_app.core.flow import FlowTracker, flow_metric_samples
from stream_app.core.impact import ImpactEngine
from stream_app.core.types import VerdictRecord
from stream_app.core.valuestream import ValueStreamDef, load_valuestream
from stream_app.events.model import Incident, KpiSample, Release, WorkflowEvent

# Core outcomes that mean "this input cannot be used": the edge dead-letters it with this reason.
DEADLETTER_OUTCOMES = frozenset(
    {"unknown-stream", "out-of-scope", "invalid-value", "too-many-label-values"}
)
MetricSample = tuple[str, dict[str, str], float]


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
    """Decoded event -> core (impact engine, flow and DORA trackers) -> verdicts. No I/O."""

    def __init__(
        self,
        catalog: Catalog,
        valuestream: ValueStreamDef | None = None,
        *,
        alpha: float = 0.05,
        report_period_seconds: float = 7 * 86400.0,
    ) -> None:
        self.catalog = catalog
        self.engine = ImpactEngine(catalog, alpha=alpha)
        vs = valuestream or load_valuestream()
        self.flow = FlowTracker(vs)
        self.dora = DoraTracker(vs)
        self.report_period_seconds = report_period_seconds
        self.max_event_time = float("-inf")

    def handle(self, event: Decoded) -> Step:
        """Feed one accepted event to the core; returns what it produced."""
        self.max_event_time = max(self.max_event_time, event.time)
        if isinstance(event, KpiSample):
            outcome = self.engine.on_sample(event)
            records = self.engine.advance(event.service) if outcome == "accepted" else []
            return self._step(records, outcome, event.service)
        if isinstance(event, Release):
            rel_outcome, records = self.engine.add_release(event)
            records = records + self.engine.advance(event.service)
            self.dora.on_release(event)
            self.flow.on_release(event)
            # A release for a service without KPIs is still a release (DORA counts it).
            return self._step(
                records, "accepted" if rel_outcome == "out-of-scope" else rel_outcome, event.service
            )
        if isinstance(event, WorkflowEvent):
            self.dora.on_workflow(event)
            return Step([], str(self.flow.on_workflow(event)), event.service)
        if isinstance(event, Incident):
            return Step([], str(self.dora.on_incident(event)), event.service)
        raise TypeError(f"not an event: {type(event).__name__}")  # pragma: no cover

    def _step(self, records: list[VerdictRecord], outcome: str, service: str) -> Step:
        for rec in records:
            self.dora.on_verdict(rec)
        return Step(records, outcome, service)

    def report_samples(self, now: float | None = None) -> list[MetricSample]:
        """Flow and DORA metric samples as of `now` (default: the latest event time seen)."""
        t = self.max_event_time if now is None else now
        if t == float("-inf"):
            return []
        period = self.report_period_seconds
        return flow_metric_samples(self.flow.snapshot(t, period)) + dora_metric_samples(
            self.dora.report(t, period)
        )
