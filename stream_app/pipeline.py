"""Routes decoded events to the pure core; the same object serves the worker and offline replay."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from stream_app.codec import Decoded
from stream_app.core.catalog import Catalog, product_key, product_name
from stream_app.core.dora import DoraReport, DoraTracker, dora_metric_samples
from stream_app.core.flow import FlowReport, FlowTracker, WorkCost, flow_metric_samples
from stream_app.core.guard import GUARD_REASONS, Guard, Limits
from stream_app.core.impact import DEFAULT_ALPHA, ImpactEngine
from stream_app.core.ledger import (
    ExpectedBenefit,
    Features,
    LedgerEntry,
    daily_level,
    item_entry,
    kpi_unit,
    ledger_metric_samples,
    release_entry,
)
from stream_app.core.types import VerdictRecord
from stream_app.core.valuestream import ValueStreamDef, load_valuestream
from stream_app.events.model import Incident, KpiSample, Release, WorkflowEvent

# Core outcomes that mean "this input cannot be used": the edge dead-letters it with this reason.
DEADLETTER_OUTCOMES = frozenset(
    {
        "unknown-stream",
        "out-of-scope",
        "invalid-value",
        "too-many-label-values",
        "bad-expectation",
        *GUARD_REASONS,
    }
)
_SNAPSHOT = b"VLP1"  # older service snapshots: magic, u32 engine snapshot length, engine, guard
# A service snapshot: magic, then its engine, guard, flow, DORA and ledger parts, each prefixed
# with its u32 length.
_SNAPSHOT2 = b"VLP2"
LEDGER_STATE_VERSION = 1
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
    # Products whose partition the release must still reach (`forward_product_releases`).
    forward: tuple[str, ...] = ()

    @property
    def rejected(self) -> bool:
        """Whether the core refused the event (it goes to the dead-letter topic)."""
        return self.outcome in DEADLETTER_OUTCOMES


@dataclass(frozen=True, slots=True)
class BatchStep:
    """What the core did with a batch of accepted events (`Pipeline.handle_many`).

    Attributes:
        events: the events of the batch, in order.
        outcomes: what happened to each event, in order (as `Step.outcome`).
        emitted: (index, step) of every event whose step carries records or ledger entries.
    """

    events: Sequence[Decoded]
    outcomes: list[str]
    emitted: list[tuple[int, Step]]

    def steps(self) -> list[Step]:
        """One `Step` per event: exactly what `Pipeline.handle` returns for each, one by one."""
        out = [
            Step([], outcome, ev.service, [])
            for ev, outcome in zip(self.events, self.outcomes, strict=True)
        ]
        for i, step in self.emitted:
            out[i] = step
        return out

    def rejected(self) -> list[int]:
        """Indices of the events the core refused (they go to the dead-letter topic)."""
        return [i for i, o in enumerate(self.outcomes) if o in DEADLETTER_OUTCOMES]

    @property
    def records(self) -> list[VerdictRecord]:
        """Every verdict record of the batch, in order."""
        return [r for _, step in self.emitted for r in step.records]

    @property
    def ledger(self) -> list[LedgerEntry]:
        """Every ledger entry of the batch, in order."""
        return [e for _, step in self.emitted for e in step.ledger]


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
        alpha: float = DEFAULT_ALPHA,
        report_period_seconds: float = 7 * 86400.0,
        features: Features | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] | None = None,
        cost_per_hour: float | None = None,
        currency: str = "",
        rework_window_seconds: float = 86400.0,
    ) -> None:
        self.limits = limits or Limits()
        if self.limits.max_label_values is not None:
            catalog = replace(catalog, max_label_values=self.limits.max_label_values)
        vs = valuestream or load_valuestream()
        # Products (value streams) own the product-level KPIs: their member services' releases
        # are judged on them (see ImpactEngine).
        if vs.value_streams and not catalog.products:
            catalog = catalog.with_products(vs.value_streams)
        self.catalog = catalog
        self.features = features or Features()
        self.cost_per_hour = cost_per_hour
        self.currency = currency
        self.engine = ImpactEngine(catalog, alpha=alpha)
        # The worker sets this: a release is registered in its service's state where it comes in,
        # and reaches its product's state through the product's partition (see README).
        self.forward_product_releases = False
        # Sanity and cardinality limits, checked before an event may touch or create state. The
        # edge injects its wall clock for the future-time check (the core never reads it).
        self.guard = Guard(catalog, self.limits, watermark=self.engine.watermark)
        self.clock = clock
        self._admitted: Decoded | None = None
        self.flow = FlowTracker(vs)
        self.dora = DoraTracker(vs, rework_window_seconds=rework_window_seconds)
        self.report_period_seconds = report_period_seconds
        self.max_event_time = float("-inf")
        # Ledger bookkeeping: release id -> (service, version, flag, commits + change ids, time),
        # and the releases with a final verdict or a declared bet (release id -> release time).
        self._rel: dict[str, tuple[str, str, str | None, tuple[str, ...], float]] = {}
        self._ledgered: dict[str, float] = {}
        self._ledger_service: dict[str, str] = {}  # release id of `_ledgered` -> its service
        # Bets declared on events: on a release (release id -> bets) and on a work item
        # ((value stream, item id) -> bets; the latest declaration of an item wins).
        self._declared: dict[str, tuple[ExpectedBenefit, ...]] = {}
        self._item_declared: dict[tuple[str, str], tuple[ExpectedBenefit, ...]] = {}
        # What the histograms already observed: finished items and first-deployed changes.
        self._observed_items: set[tuple[str, str]] = set()
        self._observed_changes: set[tuple[str, str]] = set()
        self._ledger_dirty: set[str] = set()  # services whose ledger bookkeeping changed

    def handle(self, event: Decoded) -> Step:
        """Feed one decoded event to the guard, then the core; returns what it produced."""
        if event is self._admitted:
            self._admitted = None  # `admit` already let it in
        elif (refused := self.admit(event)) is not None:
            return refused
        self._admitted = None
        self.max_event_time = max(self.max_event_time, event.time)
        if isinstance(event, KpiSample):
            outcome = self.engine.on_sample(event)
            key = self.catalog.subject_of(event)
            records = self.engine.advance(key) if outcome == "accepted" else []
            return self._step(records, outcome, event.service)
        if isinstance(event, Release):
            if event.id in self._rel:  # a producer retry: counted once
                return Step([], "duplicate", event.service)
            if not self._known_kpis(event.service, event.expect):
                return Step([], "bad-expectation", event.service)
            subjects = self.release_subjects(event)
            rel_outcome, records = self.engine.add_release(event, subjects)
            for key in subjects:
                records = records + self.engine.advance(key)
            if rel_outcome == "duplicate" and not records:
                return Step([], "duplicate", event.service)
            self.dora.on_release(event)
            self.flow.on_release(event)
            self._note_release(event)
            # A release for a service without KPIs is still a release (DORA counts it).
            step = self._step(
                records, "accepted" if rel_outcome == "out-of-scope" else rel_outcome, event.service
            )
            if self.forward_product_releases:
                products = self.engine.subjects_of(event)[1:]
                names = tuple(n for p in products if (n := product_name(p)) is not None)
                step = replace(step, forward=names)
            return step
        if isinstance(event, WorkflowEvent):
            if event.expect:
                if not self._known_kpis(event.service, event.expect):
                    return Step([], "bad-expectation", event.service)
                vs = self.flow.defn.stream_of(event.service)
                self._item_declared[(vs, event.item_id)] = event.expect
                self._ledger_dirty.add(event.service)
            self.dora.on_workflow(event)
            return Step([], str(self.flow.on_workflow(event)), event.service)
        if isinstance(event, Incident):
            return Step([], str(self.dora.on_incident(event)), event.service)
        raise TypeError(f"not an event: {type(event).__name__}")  # pragma: no cover

    def key_of(self, event: Decoded) -> str:
        """The state an event belongs to: a sample's service or product (`Catalog.subject_of`),
        any other event's service."""
        if isinstance(event, KpiSample):
            return self.catalog.subject_of(event)
        return event.service

    def release_subjects(self, r: Release) -> tuple[str, ...]:
        """The states `handle` registers a release in: its service's, and its product's unless
        the product's releases reach it apart (`forward_product_releases`)."""
        subjects = self.engine.subjects_of(r)
        return subjects[:1] if self.forward_product_releases else subjects

    def handle_product_release(self, r: Release) -> Step:
        """Register a release in its product's state only: the worker's path for releases
        forwarded to the product's partition (`forward_product_releases`). DORA, flow and the
        ledger counted it where it first came in."""
        subjects = self.engine.subjects_of(r)[1:]
        if not subjects:
            return Step([], "out-of-scope", r.service)
        self.max_event_time = max(self.max_event_time, r.time)
        outcome, records = self.engine.add_release(r, subjects)
        for key in subjects:
            records = records + self.engine.advance(key)
        return self._step(records, outcome, subjects[0])

    def handle_many(
        self,
        events: Sequence[Decoded],
        on_admit: Callable[[Decoded], object] | None = None,
    ) -> BatchStep:
        """Feed a batch of decoded events to the guard, then the core, in order, as `handle` does.

        ``handle_many(evs).steps()`` equals ``[handle(e) for e in evs]`` and leaves the same state,
        at a fraction of the per-sample cost: runs of telemetry samples go to the engine in one
        call (`ImpactEngine.on_samples`), which checks each sample with the guard and judges
        whatever becomes due at the very sample that makes it due; other events go to `handle`.

        Args:
            events: the events, in arrival order.
            on_admit: called with each event the guard lets in, just before the core sees it
                (where an edge loads the service's stored state, as it does after `admit`).
        """
        outcomes: list[str] = []
        emitted: list[tuple[int, Step]] = []
        # The first event, when `admit` already let it in, is not checked again (see `handle`).
        pre: Decoded | None = None
        if events:
            pre = events[0] if events[0] is self._admitted else None
            self._admitted = None
        check = self.guard.check
        clock = self.clock

        def admit(ev: KpiSample) -> str | None:
            nonlocal pre
            if ev is pre:  # let in by `admit`, and the edge did its part then
                pre = None
            else:
                reason = check(ev, clock() if clock is not None else None)
                if reason is not None:
                    return reason
                if on_admit is not None:
                    on_admit(ev)
            if ev.time > self.max_event_time:  # handle's max(max_event_time, time)
                self.max_event_time = ev.time
            return None

        n = len(events)
        i = 0
        while i < n:
            j = i
            while j < n and isinstance(events[j], KpiSample):
                j += 1
            if j == i:  # a release, workflow event or incident
                ev = events[i]
                if ev is pre:
                    pre = None
                    self._admitted = ev
                    step = self.handle(ev)
                elif on_admit is None:
                    step = self.handle(ev)
                else:
                    refused = self.admit(ev)
                    if refused is None:
                        on_admit(ev)
                        step = self.handle(ev)  # `admit` let it in: not checked again
                    else:
                        step = refused
                outcomes.append(step.outcome)
                if step.records or step.ledger or step.forward:
                    emitted.append((i, step))
                i += 1
                continue
            run: Sequence[KpiSample] = events[i:j]  # type: ignore[assignment]  # checked above
            run_outcomes, fired = self.engine.on_samples(run, admit)
            outcomes.extend(run_outcomes)
            for k, records in fired:
                step = self._step(records, run_outcomes[k], run[k].service)
                emitted.append((i + k, step))
            i = j
        return BatchStep(events, outcomes, emitted)

    def admit(self, event: Decoded) -> Step | None:
        """The guard's refusal of `event` as a dead-letter step, or None when it may go on.

        `handle` calls it; an edge that loads stored state per service calls it first, so a
        refused event loads, creates and touches nothing (the next `handle` of the same event
        does not check it again). `handle_many` callers check each event with it too.
        """
        reason = self.guard.check(event, self.clock() if self.clock is not None else None)
        if reason is not None:
            return Step([], reason, event.service)
        self._admitted = event
        return None

    def snapshot_service(self, service: str) -> bytes:
        """Everything the pipeline holds of a service, as bytes: its engine state (buckets,
        releases, verdicts), admission (guard), and its part of the flow, DORA and ledger state.

        A service without engine state (no KPI of the catalog, or only workflow and incident
        events so far) still has the rest.
        """
        try:
            engine = self.engine.snapshot(service)
        except KeyError:
            engine = b""
        parts = (
            engine,
            self.guard.snapshot(service),
            self.flow.snapshot_state((service,)),
            self.dora.snapshot_state((service,)),
            self._ledger_snapshot(service),
        )
        return _SNAPSHOT2 + b"".join(struct.pack("<I", len(p)) + p for p in parts)

    def restore_service(self, service: str, data: bytes) -> None:
        """Restore a `snapshot_service` (or an older or bare engine snapshot); the service is
        admitted. Its part of the flow, DORA and ledger state replaces what is held of it."""
        if data.startswith(_SNAPSHOT2):
            parts: list[bytes] = []
            at = len(_SNAPSHOT2)
            while at < len(data):
                (n,) = struct.unpack_from("<I", data, at)
                parts.append(data[at + 4 : at + 4 + n])
                at += 4 + n
            engine, guard, flow, dora, ledger = parts
            if engine:
                self.engine.restore(service, engine)
            else:
                self.engine.forget(service)
            self.guard.restore(service, guard)
            self._forget_ledger((service,))  # first: it asks the flow tracker whose items are
            self.flow.forget_services((service,))
            self.flow.restore_state(flow, merge=True)
            self.dora.forget_services((service,))
            self.dora.restore_state(dora, merge=True)
            self._ledger_restore(ledger)
            return
        guard = b""
        if data.startswith(_SNAPSHOT):
            (n,) = struct.unpack_from("<I", data, len(_SNAPSHOT))
            start = len(_SNAPSHOT) + 4
            data, guard = data[start : start + n], data[start + n :]
        self.engine.restore(service, data)
        self.guard.restore(service, guard)

    def forget_service(self, service: str) -> None:
        """Drop a service's engine state, admission, and its part of the flow, DORA and ledger
        state (its partition moved elsewhere)."""
        self.engine.forget(service)
        self.guard.forget(service)
        self._forget_ledger((service,))  # first: it asks the flow tracker whose items are
        self.flow.forget_services((service,))
        self.dora.forget_services((service,))

    def dirty_services(self) -> set[str]:
        """Services whose flow, DORA or ledger part changed since `clear_dirty` (the engine
        keeps its own: `ImpactEngine.dirty_services`)."""
        return self.flow.dirty() | self.dora.dirty() | self._ledger_dirty

    def clear_dirty(self) -> None:
        """Forget which services' flow, DORA and ledger parts changed (after they were stored)."""
        self.flow.clear_dirty()
        self.dora.clear_dirty()
        self._ledger_dirty.clear()

    def _ledger_snapshot(self, service: str) -> bytes:
        stream = self.flow.defn.stream_of(service)
        items = sorted(
            k
            for k in self._observed_items
            if k[0] == stream and self.flow.item_service(*k) == service
        )
        doc: dict[str, Any] = {
            "v": LEDGER_STATE_VERSION,
            "rel": {rid: list(f) for rid, f in self._rel.items() if f[0] == service},
            "ledgered": {
                rid: t
                for rid, t in self._ledgered.items()
                if self._ledger_service.get(rid) == service
            },
            "observed_items": items,
            "observed_changes": sorted(k for k in self._observed_changes if k[0] == service),
            "declared": {
                rid: [[b.kpi, b.direction, b.change] for b in bets]
                for rid, bets in self._declared.items()
                if rid in self._rel and self._rel[rid][0] == service
            },
            "item_declared": [
                [vs, item, [[b.kpi, b.direction, b.change] for b in bets]]
                for (vs, item), bets in sorted(self._item_declared.items())
                if vs == stream and self._item_owner(vs, item) == service
            ],
            # The latest event time seen when this was written: reports are as of it.
            "max_event_time": self.max_event_time if math.isfinite(self.max_event_time) else None,
        }
        return orjson.dumps(doc)

    def _ledger_restore(self, data: bytes) -> None:
        doc: dict[str, Any] = orjson.loads(data)
        if doc.get("v") != LEDGER_STATE_VERSION:
            raise ValueError(f"ledger state version {doc.get('v')!r}, expected 1")
        for rid, (service, version, flag, shipped, t) in doc["rel"].items():
            self._rel[rid] = (service, version, flag, tuple(shipped), t)
        service_of = {rid: f[0] for rid, f in doc["rel"].items()}
        for rid, t in doc["ledgered"].items():
            self._ledgered[rid] = t
            self._ledger_service[rid] = service_of.get(rid) or self._verdict_service(rid)
        self._observed_items.update((a, b) for a, b in doc["observed_items"])
        self._observed_changes.update((a, b) for a, b in doc["observed_changes"])
        for rid, bets in doc.get("declared", {}).items():
            self._declared[rid] = tuple(ExpectedBenefit(k, d, c) for k, d, c in bets)
        for vs, item, bets in doc.get("item_declared", []):
            self._item_declared[(vs, item)] = tuple(ExpectedBenefit(k, d, c) for k, d, c in bets)
        if doc["max_event_time"] is not None:
            self.max_event_time = max(self.max_event_time, doc["max_event_time"])

    def _item_owner(self, value_stream: str, item: str) -> str | None:
        """The service a work item belongs to (the flow tracker's), None when it is not known."""
        return self.flow.item_service(value_stream, item)

    def _verdict_service(self, release_id: str) -> str:
        info = self.dora.release_info(release_id)
        return info.service if info is not None else ""

    def _forget_ledger(self, services: Collection[str]) -> None:
        gone = set(services)
        self._rel = {rid: f for rid, f in self._rel.items() if f[0] not in gone}
        drop = {rid for rid, svc in self._ledger_service.items() if svc in gone}
        self._ledgered = {rid: t for rid, t in self._ledgered.items() if rid not in drop}
        self._ledger_service = {rid: s for rid, s in self._ledger_service.items() if s not in gone}
        self._declared = {rid: b for rid, b in self._declared.items() if rid in self._rel}
        self._item_declared = {
            k: b for k, b in self._item_declared.items() if self._item_owner(*k) not in gone
        }
        self._observed_items = {
            k for k in self._observed_items if self.flow.item_service(*k) not in gone
        }
        self._observed_changes = {k for k in self._observed_changes if k[0] not in gone}
        self._ledger_dirty -= gone

    def close_input(self) -> Step:
        """Close every service as if no more input were coming (replay's end of the files)."""
        return self._step(self.engine.close_input(), "accepted", "")

    def _step(self, records: list[VerdictRecord], outcome: str, service: str) -> Step:
        judged: dict[str, None] = {}
        dens: dict[str, dict[str, float]] = {}
        for rec in records:
            level = self._level(rec, dens) if rec.phase == "final" else None
            if self.dora.on_verdict(rec, level) == "accepted":
                judged[rec.release_id] = None
                self._ledgered[rec.release_id] = rec.release_time
                self._ledger_service[rec.release_id] = rec.service
                self._ledger_dirty.add(rec.service)
        ledger = [e for rid in judged for e in self.ledger_entries(rid)]
        return Step(records, outcome, service, ledger)

    def _level(
        self, rec: VerdictRecord, dens: dict[str, dict[str, float]]
    ) -> tuple[float, str] | None:
        """A final verdict's KPI baseline level in business units a day, and its unit."""
        spec = next((k for k in self.catalog.for_service(rec.service) if k.name == rec.kpi), None)
        if spec is None:
            return None
        unit = kpi_unit(spec.aggregation, spec.stream or spec.name, spec.numerator)
        if unit is None:
            return None
        if rec.release_id not in dens:
            # Denominator per bucket holding data, from the release's baseline windows (read once
            # per release and step; sum KPIs have 1 per bucket).
            per: dict[str, float] = {}
            for kw in self.engine.release_windows(rec.release_id):
                filled = sum(1 for d in kw.baseline.den if d > 0)
                if filled:
                    per[kw.spec.name] = sum(kw.baseline.den) / filled
            dens[rec.release_id] = per
        den = 1.0 if spec.aggregation == "sum" else dens[rec.release_id].get(spec.name)
        if den is None:
            return None
        level = daily_level(
            spec.aggregation, rec.judgement.baseline_value, den, spec.bucket_seconds
        )
        return None if level is None else (level, unit)

    def _known_kpis(self, service: str, bets: tuple[ExpectedBenefit, ...]) -> bool:
        """Whether every bet names a KPI the catalog judges for the service."""
        if not bets:
            return True
        names = {k.name for k in self.catalog.for_service(service)}
        if self.catalog.has_product_kpis():  # bets on the product's KPIs too
            product = product_key(self.catalog.product_of(service))
            names |= {k.name for k in self.catalog.for_service(product)}
        return all(b.kpi in names for b in bets)

    def _note_release(self, r: Release) -> None:
        shipped = tuple(dict.fromkeys((*r.commits, *r.change_ids)))
        self._rel.setdefault(r.id, (r.service, r.version, r.flag_key, shipped, r.time))
        self._ledger_dirty.add(r.service)
        if r.expect:
            self._declared[r.id] = r.expect
        if self._expected(r.id, r.service, r.version, r.flag_key, shipped):
            self._ledgered.setdefault(r.id, r.time)
            self._ledger_service.setdefault(r.id, r.service)

    def _expected(
        self,
        release_id: str,
        service: str,
        version: str,
        flag: str | None,
        shipped: tuple[str, ...],
    ) -> tuple[ExpectedBenefit, ...]:
        """A release's bets. Per KPI the first declaration wins, in this order: the release's
        own event (deployment or flag change), its work items' (in shipped order), the features
        file."""
        vs = self.flow.defn.stream_of(service)
        sources = [self._declared.get(release_id, ())]
        sources += [self._item_declared.get((vs, item), ()) for item in shipped]
        sources.append(self.features.expected_for(service, version, flag, shipped))
        out: dict[str, ExpectedBenefit] = {}
        for bets in sources:
            for b in bets:
                out.setdefault(b.kpi, b)
        return tuple(out.values())

    def item_bets(
        self, service: str, shipped: tuple[str, ...]
    ) -> list[tuple[str, tuple[ExpectedBenefit, ...]]]:
        """(item, bets) of the shipped work items with bets: declared on the item, else in the
        features file (per KPI, the item's own declaration wins)."""
        vs = self.flow.defn.stream_of(service)
        out: dict[str, dict[str, ExpectedBenefit]] = {}
        for item in shipped:
            for b in self._item_declared.get((vs, item), ()):
                out.setdefault(item, {}).setdefault(b.kpi, b)
        for bet in self.features.item_bets(shipped):
            assert bet.item is not None  # item_bets only returns item bets
            for b in bet.expected:
                out.setdefault(bet.item, {}).setdefault(b.kpi, b)
        return [(item, tuple(bets.values())) for item, bets in out.items()]

    def ledger_entries(self, release_id: str) -> list[LedgerEntry]:
        """The ledger entries of a release: its own, then one per declared feature item it shipped.

        Expected benefits come from the features file: features carried by the release's
        version, flag, or a work item / change it shipped.
        """
        entry = self._release_entry(release_id)
        if entry is None:
            return []
        out = [entry]
        for item_id, bets in self.item_bets(entry.service, entry.cost.item_ids):
            item = item_entry(
                self.flow.defn.stream_of(entry.service),
                item_id,
                self.flow,
                self.dora,
                bets,
                self.cost_per_hour,
            )
            if item is not None:
                out.append(item)
        return out

    def release_bets(self, release_id: str) -> tuple[ExpectedBenefit, ...]:
        """The bets a release carries (see `_expected` for the precedence); () when unknown."""
        facts = self._rel.get(release_id)
        if facts is None:
            return ()
        items = self.flow.release_cost(release_id).item_ids
        shipped = tuple(dict.fromkeys((*facts[3], *items)))
        return self._expected(release_id, facts[0], facts[1], facts[2], shipped)

    def _release_entry(self, release_id: str) -> LedgerEntry | None:
        facts = self._rel.get(release_id)
        expected: tuple[ExpectedBenefit, ...] = ()
        if facts is not None:
            # Items the flow tracker linked to the release count as shipped by it too.
            items = self.flow.release_cost(release_id).item_ids
            shipped = tuple(dict.fromkeys((*facts[3], *items)))
            expected = self._expected(release_id, facts[0], facts[1], facts[2], shipped)
        return release_entry(release_id, self.flow, self.dora, expected, self.cost_per_hour)

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
            self._declared.pop(rid, None)
        # Bets of items the flow tracker forgot go too (bounded as the tracker is).
        for vs, item in [k for k in self._item_declared if self.flow.item_cost(*k) is None]:
            del self._item_declared[(vs, item)]
        self._ledgered = {rid: rt for rid, rt in self._ledgered.items() if rt >= cutoff}
        self._ledger_service = {
            rid: svc for rid, svc in self._ledger_service.items() if rid in self._ledgered
        }
        ledger = tuple(
            e
            for rid, rt in sorted(self._ledgered.items(), key=lambda kv: (kv[1], kv[0]))
            if t - period < rt <= t
            if (e := self._release_entry(rid)) is not None
        )
        return Report(t, flow, dora, ledger)

    def ledger_report(self, now: float, period_seconds: float) -> list[LedgerEntry]:
        """Ledger entries of the releases of ``(now - period, now]`` that were judged or carry
        bets, each followed by its declared feature items' entries (as published)."""
        out: list[LedgerEntry] = []
        for rid, rt in sorted(self._ledgered.items(), key=lambda kv: (kv[1], kv[0])):
            if now - period_seconds < rt <= now:
                out.extend(self.ledger_entries(rid))
        return out

    def bets_in_progress(
        self, now: float
    ) -> list[tuple[str, str, str | None, tuple[ExpectedBenefit, ...], WorkCost]]:
        """Work items with bets that are not finished at ``now``: (value stream, item, stage,
        bets, cost so far), in value stream and item order."""
        wanted: dict[tuple[str, str], dict[str, ExpectedBenefit]] = {}
        for key, declared in self._item_declared.items():
            for b in declared:
                wanted.setdefault(key, {}).setdefault(b.kpi, b)
        for bet in self.features.bets:
            if bet.item is None:
                continue
            streams = (
                (self.flow.defn.stream_of(bet.service),) if bet.service else self.flow.streams()
            )
            for vs in streams:
                for b in bet.expected:
                    wanted.setdefault((vs, bet.item), {}).setdefault(b.kpi, b)
        out = []
        for (vs, item), bets in sorted(wanted.items()):
            st = self.flow.item_state(vs, item, now)
            cost = self.flow.item_cost(vs, item)
            if st is None or st[1] or cost is None:
                continue
            out.append((vs, item, st[0], tuple(bets.values()), cost))
        return out

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
            owner = self.flow.item_service(*key)
            if owner is not None:
                self._ledger_dirty.add(owner)
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
                self._ledger_dirty.add(service)
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
