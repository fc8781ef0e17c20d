"""Routes decoded events to the pure core; the same object serves the worker and offline replay."""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_app.codec import Decoded
from stream_app.core.catalog import Catalog
from stream_app.core.dora import DoraReport, DoraTracker, dora_metric_samples
from stream_app.core.flow import FlowReport, FlowTracker, flow_metric_samples
from stream_app.core.impact import ImpactEngine
from stream_app.core.ledger import (
    ExpectedBenefit,
    Features,
    LedgerEntry,
    item_entry,
    ledger_metric_samples,
    release_entry,
)
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
        ledger: value-ledger entries the verdicts completed or revised (to publish), in order.
    """

    records: list[VerdictRecord] = field(default_factory=list)
    outcome: str = "accepted"
    service: str = ""
    ledger: list[LedgerEntry] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        """Whether the core refused the event (it goes to the dead-letter topic)."""
        return self.outcome in DEADLETTER_OUTCOMES


@dataclass(frozen=True, slots=True)
class Report:
    """Flow, DORA and value-ledger reports as of one event time, over the report period."""

    now: float
    flow: dict[str, FlowReport]  # value stream -> report
    dora: dict[str, DoraReport]  # service -> report
    ledger: tuple[LedgerEntry, ...] = ()  # releases of the period: judged or with declared bets


class Pipeline:
    """Decoded event -> core (impact engine, flow and DORA trackers) -> verdicts. No I/O."""

    def __init__(
        self,
        catalog: Catalog,
        valuestream: ValueStreamDef | None = None,
        *,
        alpha: float = 0.05,
        report_period_seconds: float = 7 * 86400.0,
        features: Features | None = None,
    ) -> None:
        self.catalog = catalog
        self.features = features or Features()
        self.engine = ImpactEngine(catalog, alpha=alpha)
        vs = valuestream or load_valuestream()
        self.flow = FlowTracker(vs)
        self.dora = DoraTracker(vs)
        self.report_period_seconds = report_period_seconds
        self.max_event_time = float("-inf")
        # Ledger bookkeeping: release id -> (service, version, flag, commits + change ids, time),
        # and the releases with a final verdict or a declared bet (release id -> release time).
        self._rel: dict[str, tuple[str, str, str | None, tuple[str, ...], float]] = {}
        self._ledgered: dict[str, float] = {}
        # What the histograms already observed: finished items and first-deployed changes.
        self._observed_items: set[tuple[str, str]] = set()
        self._observed_changes: set[tuple[str, str]] = set()

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
            self._note_release(event)
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

    def close_input(self) -> Step:
        """Close every service as if no more input were coming (replay's end of the files)."""
        return self._step(self.engine.close_input(), "accepted", "")

    def _step(self, records: list[VerdictRecord], outcome: str, service: str) -> Step:
        judged: dict[str, None] = {}
        for rec in records:
            if self.dora.on_verdict(rec) == "accepted":
                judged[rec.release_id] = None
                self._ledgered[rec.release_id] = rec.release_time
        ledger = [e for rid in judged for e in self.ledger_entries(rid)]
        return Step(records, outcome, service, ledger)

    def _note_release(self, r: Release) -> None:
        shipped = tuple(dict.fromkeys((*r.commits, *r.change_ids)))
        self._rel.setdefault(r.id, (r.service, r.version, r.flag_key, shipped, r.time))
        if self.features.expected_for(r.service, r.version, r.flag_key, shipped):
            self._ledgered.setdefault(r.id, r.time)

    def ledger_entries(self, release_id: str) -> list[LedgerEntry]:
        """The ledger entries of a release: its own, then one per declared feature item it shipped.

        Expected benefits come from the features file: features carried by the release's
        version, flag, or a work item / change it shipped.
        """
        entry = self._release_entry(release_id)
        if entry is None:
            return []
        out = [entry]
        for bet in self.features.item_bets(entry.cost.item_ids):
            assert bet.item is not None  # item_bets only returns item bets
            item = item_entry(
                self.flow.defn.stream_of(entry.service),
                bet.item,
                self.flow,
                self.dora,
                bet.expected,
            )
            if item is not None:
                out.append(item)
        return out

    def _release_entry(self, release_id: str) -> LedgerEntry | None:
        facts = self._rel.get(release_id)
        expected: tuple[ExpectedBenefit, ...] = ()
        if facts is not None:
            # Items the flow tracker linked to the release count as shipped by it too.
            items = self.flow.release_cost(release_id).item_ids
            shipped = tuple(dict.fromkeys((*facts[3], *items)))
            expected = self.features.expected_for(facts[0], facts[1], facts[2], shipped)
        return release_entry(release_id, self.flow, self.dora, expected)

    def report(self, now: float | None = None) -> Report | None:
        """Flow, DORA and ledger reports as of `now` (default: the latest event time; None before).

        The worker and replay both default to the latest event time, so the same events give the
        same report whatever the wall clock says.
        """
        t = self.max_event_time if now is None else now
        if t == float("-inf"):
            return None
        period = self.report_period_seconds
        flow, dora = self.flow.snapshot(t, period), self.dora.report(t, period)
        # Bookkeeping older than the trackers' retention is gone from them too.
        cutoff = t - self.dora.retention
        for rid in [rid for rid, (*_, rt) in self._rel.items() if rt < cutoff]:
            del self._rel[rid]
        self._ledgered = {rid: rt for rid, rt in self._ledgered.items() if rt >= cutoff}
        ledger = tuple(
            e
            for rid, rt in sorted(self._ledgered.items(), key=lambda kv: (kv[1], kv[0]))
            if t - period < rt <= t
            if (e := self._release_entry(rid)) is not None
        )
        return Report(t, flow, dora, ledger)

    def drain_observations(self, now: float | None = None) -> list[MetricSample]:
        """Histogram observations not yet handed out, as (metric name, labels, value).

        Each finished item is observed once (its flow time, and its active and waiting time in
        every stage it visited), and each change once at its first production deployment (its
        lead time), when first seen finished as of `now` (default: the latest event time).
        Events arriving after that do not revise an observation: the gauges carry the exact
        figures, the histograms the shape over time.
        """
        t = self.max_event_time if now is None else now
        if t == float("-inf"):
            return []
        out: list[MetricSample] = []
        seen: set[tuple[str, str]] = set()
        for it in self.flow.finished_items(t):
            key = (it.value_stream, it.item_id)
            seen.add(key)
            if key in self._observed_items:
                continue
            vs = it.value_stream
            if it.flow_seconds is not None:
                labels = {"value_stream": vs, "item_type": it.item_type}
                out.append(("valueloop_item_flow_time_seconds", labels, it.flow_seconds))
            for stage, v in it.active.items():
                labels = {"value_stream": vs, "stage": stage}
                out.append(("valueloop_item_stage_active_seconds", labels, v))
            for stage, v in it.wait.items():
                labels = {"value_stream": vs, "stage": stage}
                out.append(("valueloop_item_stage_wait_seconds", labels, v))
        # Keys of items the tracker forgot go too, so the set stays as bounded as the tracker.
        self._observed_items = seen
        changes: set[tuple[str, str]] = set()
        for service, change, _, lead in self.dora.change_lead_times(t):
            changes.add((service, change))
            if (service, change) not in self._observed_changes:
                out.append(("valueloop_change_lead_time_seconds", {"service": service}, lead))
        self._observed_changes = changes
        return out

    def report_samples(self, now: float | None = None) -> list[MetricSample]:
        """Flow, DORA and ledger metric samples as of `now` (default: the latest event time)."""
        rep = self.report(now)
        if rep is None:
            return []
        return report_samples(rep)


def report_samples(rep: Report) -> list[MetricSample]:
    """The Prometheus samples of a report (flow, DORA, then the ledger)."""
    return (
        flow_metric_samples(rep.flow)
        + dora_metric_samples(rep.dora)
        + ledger_metric_samples(rep.ledger)
    )
