"""The streaming state of release impact: releases and KPI buckets in, verdict records out.

Ordering and time
-----------------
Everything runs on event time. Per service, the watermark is the newest event time seen (samples
and release times) minus the allowed lateness (the largest of the service's KPIs). Events of a
service are assumed to arrive roughly in event-time order (one Kafka partition per service key): a
sample up to the allowed lateness behind the newest one still lands in its bucket, an older one is
``late``: counted by the caller, never used. A window is judged once the watermark has passed its
end, so every bucket it reads is closed and no later sample can change it: a final verdict is never
revised for late data (only for a newly seen overlapping release, see below).

Determinism
-----------
The same events in the same per-service order give the same records, whether `advance` runs after
every event or once per batch: `on_release` first processes everything already due, interim and
final judgements read only closed buckets, and reads mask history by a horizon derived from the
judgement's own due time, not from when eviction happened to run. The worker and offline replay
both run this engine.

Releases
--------
A release (deploy, upgrade, rollback or flag change) of a service some KPI applies to is
registered once per id (a repeated id is a ``duplicate``); one of a service no KPI applies to is
``out-of-scope`` and ignored; one older than the retained history by more than the confounding
reach is ``too-old``. A release of a service without samples yet is accepted: when the watermark
passes its horizon it is judged ``inconclusive`` with reason ``no-data`` (releases do not move the
watermark: until samples of the service arrive it stays pending). Two releases of one service
closer than a KPI's `overlap` are ``confounded`` on that KPI, both naming each other; a decision
is final only from the look past `overlap` on (interim before), so a confounding release read
late changes no final verdict; one arriving later still revises it. A release scoped to a label
value
(``{"region": "eu"}``: the first configured scope label it names) is judged on that scope's
buckets, with its own seasonal reference when one is clean, else with the rest of the traffic as a
concurrent control when the rest holds enough data.

Products
--------
A product-level KPI (``level = "product"``) is measured for a product (value stream) as a whole. Its
samples go to the product's state, keyed ``product:<name>`` (`Catalog.subject_of`), beside the
services' states; every release of a member service is registered in its service's state and in
its product's (`subjects_of`). In the product's state the releases of all member services are one
sequence: one cuts another's baseline and horizon there, and two closer than a KPI's `overlap`
confound each other on it, as two releases of one service do. Records carry the product.

Looks and references
--------------------
A release is looked at on a fixed schedule (stream_app.core.sequential.look_schedule) from the
KPI's minimum post window until its verdict is decisive, the maximum horizon passes or the next
release of the service starts; the windows that no later look changes (baseline, references) are
read once. The baseline is the longest stretch before the release that no earlier release and no
missing history touches. References are the same hours a week earlier and on earlier days of the
same kind (Monday, Tuesday-Friday, Saturday, Sunday); a reference day's own release cuts its
baseline before and its post window after that release, so no other release's step is read. See
stream_app.core.judge for how the judge pools them.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

import orjson

from stream_app.core.buckets import CHUNK, SampleOutcome, ServiceBuckets, layouts_for, scope_key
from stream_app.core.catalog import DAY_SECONDS, Catalog, product_key
from stream_app.core.judge import DEFAULT_ALPHA, Look, Reference
from stream_app.core.profile import AdjustedDay, level_adjust
from stream_app.core.sequential import schedule_boundaries
from stream_app.core.types import (
    KpiJudgement,
    KpiSpec,
    Verdict,
    VerdictRecord,
    WindowData,
)
from stream_app.events.model import Expectation, KpiSample, Release

ReleaseOutcome = Literal["accepted", "duplicate", "out-of-scope", "too-old"]
RELEASE_OUTCOMES: tuple[ReleaseOutcome, ...] = ("accepted", "duplicate", "out-of-scope", "too-old")

# A seasonal or control reference is used only when it holds at least this share of the non-empty
# buckets the judged windows hold: a half-empty reference adds more noise than it removes.
REFERENCE_COVERAGE = 0.8
# Seasonal reference candidates: (label, lag in days). "auto" takes the week-ago windows when they
# are usable, else pools every usable earlier day of the retained week (six at most); "daily"
# keeps one day of history, so only the day-ago windows.
_SEASONS: dict[str, tuple[tuple[str, int], ...]] = {
    "auto": (("weekly", 7), *(("daily", d) for d in range(1, 7))),
    "weekly": (("weekly", 7),),
    "daily": (("daily", 1),),
    "none": (),
}
_MAGIC = b"VLS1"
# The spending function's power (alpha * t**rho): see stream_app.core.sequential.
SPENDING_RHO = 1.0


class JudgeFn(Protocol):
    """The judge's signature (stream_app.core.judge.judge_kpi)."""

    def __call__(
        self,
        spec: KpiSpec,
        base: WindowData,
        post: WindowData,
        refs: Sequence[Reference] = (),
        *,
        look: Look | None = None,
        alpha: float = 0.05,
    ) -> KpiJudgement: ...


@dataclasses.dataclass(slots=True)
class _ReleaseState:
    release: Release
    seen_wm: float  # the service watermark when the release was registered
    next_look: int = 0  # index of the next look in the release's schedule
    finalized: bool = False  # every KPI has its final verdict
    interim: dict[str, tuple[Verdict, int]] = dataclasses.field(default_factory=dict)
    final: dict[str, VerdictRecord] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> tuple[float, str]:
        return (self.release.time, self.release.id)


@dataclasses.dataclass(slots=True)
class _ServiceState:
    """The state of one service's KPIs, or of one product's (key `product_key`): a product's
    holds the releases of every member service, so they cut and confound each other there."""

    buckets: ServiceBuckets
    specs: tuple[KpiSpec, ...]
    name: str = ""  # the state's key: a service, or "product:<name>"
    releases: dict[str, _ReleaseState] = dataclasses.field(default_factory=dict)
    next_due: float = math.inf  # earliest watermark at which some release has work to do
    next_compact: float = -math.inf  # watermark at which closed sketches are compacted next
    next_evict: float = -math.inf  # watermark at which old history is evicted next


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """Bucket indices of one KPI's windows for one release (post possibly cut for an interim)."""

    width: float
    base_first: int
    base_stop: int
    post_first: int
    post_stop: int
    post_full: int  # buckets of the complete post window

    def post_due(self) -> float:
        return self.post_stop * self.width


def plan_windows(
    spec: KpiSpec, time: float, elapsed: float | None = None, after: float | None = None
) -> _Plan:
    """Windows of `spec` around a release at `time`.

    Baseline is [t - baseline, t), starting no earlier than the post window of a previous release
    at `after`; post is [t, t + elapsed) (default: the minimum post window), on bucket boundaries;
    a release time that is not on a boundary skips the bucket it falls in (half before, half
    after the release).
    """
    w = spec.bucket_seconds
    i0 = math.floor(time / w)
    post_first = i0 if i0 * w == time else i0 + 1
    n_base = round(spec.baseline_seconds / w)
    base_first = i0 - n_base
    if after is not None and math.isfinite(after):
        a0 = math.floor(after / w)
        base_first = min(max(base_first, a0 if a0 * w == after else a0 + 1), i0)
    n_full = round(max(spec.max_horizon_seconds, spec.post_seconds) / w)
    span = spec.post_seconds if elapsed is None else elapsed
    n = min(n_full, math.floor(span / w + 1e-9))
    return _Plan(w, base_first, i0, post_first, post_first + n, n_full)


def _no_data(spec: KpiSpec) -> KpiJudgement:
    return KpiJudgement(
        kpi=spec.name,
        verdict="inconclusive",
        reason="no samples in the baseline or post window",
        reason_code="no-data",
    )


def _history_lost(spec: KpiSpec) -> KpiJudgement:
    return KpiJudgement(
        kpi=spec.name,
        verdict="inconclusive",
        reason=(
            "the release arrived after part of its baseline had left the retained history "
            "(raise the retention or emit deployment events sooner)"
        ),
        reason_code="history-evicted",
    )


def _history_missing(spec: KpiSpec, first: float) -> KpiJudgement:
    return KpiJudgement(
        kpi=spec.name,
        verdict="inconclusive",
        reason=(
            f"the baseline starts before the first sample of {', '.join(spec.streams())} "
            f"(t={first:g}): missing history would read as zeros"
        ),
        reason_code="history-missing",
    )


def _no_reference(spec: KpiSpec) -> KpiJudgement:
    return KpiJudgement(
        kpi=spec.name,
        verdict="inconclusive",
        reason=(
            "no reference yet: no week-ago windows and no earlier day of the same kind (Monday, "
            "Tuesday-Friday, Saturday, Sunday) with data at these hours, so the shape of the day "
            'cannot be told from the release\'s effect (seasonality = "none" judges without one)'
        ),
        reason_code="no-reference",
    )


def _confound(j: KpiJudgement, ids: tuple[str, ...]) -> KpiJudgement:
    return dataclasses.replace(
        j,
        verdict="confounded",
        reason_code="overlap",
        reason=f"another release falls within this release's windows: {', '.join(ids)}",
        confounders=ids,
    )


class ImpactEngine:
    """Joins releases to the KPI shifts after them, per service, in event time.

    Feed it with `on_release` and `on_sample` (in per-service arrival order) and call `advance` to
    close what the watermark allows; all three return what happened as values. `snapshot` and
    `restore` carry a service's whole state, so a restarted worker continues with the same verdicts.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        alpha: float = DEFAULT_ALPHA,
        interim_every_buckets: int = 5,
        judge: JudgeFn | None = None,
    ) -> None:
        """Build an engine.

        Args:
            catalog: the validated KPI catalog.
            alpha: the error rate of a release's verdict on one KPI, spent over its looks.
            interim_every_buckets: the looks' spacing in the first half hour, in buckets (they
                spread out later, see `stream_app.core.sequential.look_schedule`); 0: a single
                look at the maximum horizon.
            judge: the per-KPI judge; defaults to ``stream_app.core.judge.judge_kpi``.
        """
        if interim_every_buckets < 0:
            raise ValueError("interim_every_buckets must be >= 0")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if judge is None:
            # Imported here so the engine can be tested with a stub judge on its own.
            from stream_app.core import judge as judge_module

            judge = judge_module.judge_kpi
        self.catalog = catalog
        self.alpha = alpha
        self.interim_every_buckets = interim_every_buckets
        self._judge: JudgeFn = judge
        self._retention = catalog.retention_seconds()
        self._states: dict[str, _ServiceState] = {}
        self._dirty: set[str] = set()
        # Windows of a release that no later look changes (baseline, references), per
        # (service, release id, KPI): derived from closed buckets, so never snapshotted.
        self._fixed: dict[tuple[str, str, str], _Fixed] = {}

    # -- input -------------------------------------------------------------------------------

    def _state(self, service: str) -> _ServiceState | None:
        st = self._states.get(service)
        if st is None:
            specs = self.catalog.for_service(service)
            if not specs:
                return None
            buckets = ServiceBuckets(
                layouts_for(self.catalog, service),
                lateness=self.catalog.allowed_lateness_seconds(service),
                retention=self._retention,
                scope_labels=self.catalog.scope_labels,
                max_label_values=self.catalog.max_label_values,
            )
            st = self._states[service] = _ServiceState(buckets, specs, service)
        return st

    def on_sample(self, s: KpiSample) -> SampleOutcome:
        """Put a KPI sample in its event-time bucket.

        Returns:
            "accepted", or why not: "late", "unknown-stream" (no KPI of the service reads it),
            "out-of-scope" (no KPI applies to the service), "invalid-value",
            "too-many-label-values".
        """
        key = self.catalog.subject_of(s)
        st = self._states.get(key) or self._state(key)
        if st is None:
            return "out-of-scope"
        outcome = st.buckets.add(s.kpi, s.time, s.value, s.count, s.labels)
        if outcome == "accepted":
            self._dirty.add(key)
        return outcome

    def on_samples(
        self,
        samples: Sequence[KpiSample],
        admit: Callable[[KpiSample], str | None] | None = None,
    ) -> tuple[list[str], list[tuple[int, list[VerdictRecord]]]]:
        """`on_sample`, then `advance(service)` after each accepted sample, for a run of samples.

        The records and state are exactly those of the one-by-one calls; the saving is that the
        per-sample check "is anything due?" runs inline, and `advance` only when it is.

        Args:
            samples: the samples, in arrival order.
            admit: called with each sample first, in turn; a reason it returns (e.g. a guard's
                refusal) is the sample's outcome and the engine does not see the sample.

        Returns:
            The outcome of every sample, and (index of the sample, records) for each sample
            whose advance emitted records, in order.
        """
        outcomes: list[str] = []
        fired: list[tuple[int, list[VerdictRecord]]] = []
        append = outcomes.append
        states = self._states
        dirty = self._dirty
        subject = self.catalog.subject_of if self.catalog.has_product_kpis() else None
        for i, s in enumerate(samples):
            if admit is not None:
                refused = admit(s)
                if refused is not None:
                    append(refused)
                    continue
            service = s.service if subject is None else subject(s)
            # Looked up for every sample: `admit` may restore or drop a service's state.
            st = states.get(service) or self._state(service)
            if st is None:
                append("out-of-scope")
                continue
            b = st.buckets
            outcome = b.add(s.kpi, s.time, s.value, s.count, s.labels)
            append(outcome)
            if outcome != "accepted":
                continue
            dirty.add(service)
            # `advance(service)` does nothing unless the watermark reached something due (an
            # inlined `watermark`: max_time is set once a sample was accepted).
            wm = b.max_time - b.lateness  # type: ignore[operator]  # not None once accepted
            flushed = b.flushed_to
            if flushed is not None and flushed > wm:
                wm = flushed
            if wm >= st.next_due or wm >= st.next_compact or wm >= st.next_evict:
                records = self._advance(service, st)
                if records:
                    fired.append((i, records))
        return outcomes, fired

    def on_release(self, r: Release) -> list[VerdictRecord]:
        """Register a release; returns verdicts it caused (see `add_release`)."""
        return self.add_release(r)[1]

    def subjects_of(self, r: Release) -> tuple[str, ...]:
        """The states a release is judged in: its service's, then its product's (when the
        catalog has product-level KPIs)."""
        if not self.catalog.has_product_kpis():
            return (r.service,)
        return (r.service, product_key(self.catalog.product_of(r.service)))

    def add_release(
        self, r: Release, subjects: Sequence[str] | None = None
    ) -> tuple[ReleaseOutcome, list[VerdictRecord]]:
        """Register a release in its service's state and its product's (`subjects_of`).

        Args:
            r: the release.
            subjects: only these of its states (the worker registers a release in its
                product's state on the product's partition).

        Returns:
            The outcome (the first state's that does not find it out of scope), and the records
            emitted: verdicts that were already due, and revisions of final verdicts that this
            release now confounds.
        """
        outcome: ReleaseOutcome = "out-of-scope"
        out: list[VerdictRecord] = []
        for key in self.subjects_of(r) if subjects is None else subjects:
            got, records = self._add_release(key, r)
            out.extend(records)
            if outcome == "out-of-scope":
                outcome = got
        return outcome, out

    def _add_release(self, key: str, r: Release) -> tuple[ReleaseOutcome, list[VerdictRecord]]:
        st = self._state(key)
        if st is None:
            return "out-of-scope", []
        # Whatever was due before this release is judged without it, as if advance ran just now.
        out = self._advance(key, st)
        if r.id in st.releases:
            return "duplicate", out
        wm = st.buckets.watermark
        # Still accepted when its own windows are partly forgotten: it may confound a retained
        # release (and is then confounded itself); beyond that reach it can matter to nothing.
        if r.time < wm - self._retention - self._reach(st):
            return "too-old", out
        rs = _ReleaseState(r, seen_wm=wm)
        # A release does not move the watermark: releases and samples come from different topics,
        # and in the worker the deployments topic may be read far ahead of the telemetry topic.
        # Moving the watermark here would turn the samples still to come into "late" ones.
        # Looks already due are taken at once, in order, as if it had been known all along.
        st.releases[r.id] = rs
        # The new release changes other releases' baselines, references and horizons.
        self._drop_fixed(key)
        self._dirty.add(key)
        for other in sorted(st.releases.values(), key=lambda x: x.key):
            if other is rs:
                continue
            for spec in st.specs:
                rec = other.final.get(spec.name)
                if rec is None or r.id in rec.judgement.confounders:
                    continue
                # Overlapping releases confound each other; a verdict whose post window the new
                # release falls into read its effect too.
                inside = other.release.time < r.time < rec.post_window[1]
                if not (self._overlap(spec, other.release, r) or inside):
                    continue
                ids = tuple(sorted({*rec.judgement.confounders, r.id}))
                new = dataclasses.replace(
                    rec, revision=rec.revision + 1, judgement=_confound(rec.judgement, ids)
                )
                other.final[spec.name] = new
                out.append(new)
        st.next_due = min(
            (self._next_due(st, x) for x in st.releases.values() if not x.finalized),
            default=math.inf,
        )
        return "accepted", out

    # -- progress ----------------------------------------------------------------------------

    def advance(self, service: str | None = None) -> list[VerdictRecord]:
        """Judge whatever the watermark of `service` (or of every service) has made due.

        Emits interim records (only when a KPI's interim verdict changed) and final records, then
        compacts closed buckets and evicts history the catalog no longer needs.
        """
        if service is not None:  # the per-sample call: no lists unless something is due
            st = self._states.get(service)
            return self._advance(service, st) if st is not None else []
        out: list[VerdictRecord] = []
        for name in sorted(self._states):
            out.extend(self._advance(name, self._states[name]))
        return out

    def close_input(self, service: str | None = None) -> list[VerdictRecord]:
        """End of input (offline replay): close all buckets up to the newest event time, advance.

        Releases whose post window still extends beyond the newest event time stay pending.
        """
        names = [service] if service is not None else sorted(self._states)
        for name in names:
            st = self._states.get(name)
            if st is not None:
                st.buckets.flush()
                st.next_due = -math.inf
                self._dirty.add(name)
        return self.advance(service)

    def pending_releases(self, service: str | None = None) -> list[Release]:
        """Releases registered but not finally judged yet, oldest first."""
        names = [service] if service is not None else sorted(self._states)
        out = [
            rs.release
            for name in names
            if (st := self._states.get(name)) is not None
            for rs in sorted(st.releases.values(), key=lambda x: x.key)
            if not rs.finalized
        ]
        return out

    def watermark(self, service: str) -> float:
        """The service's watermark (-inf when nothing was seen)."""
        st = self._states.get(service)
        return st.buckets.watermark if st is not None else -math.inf

    def _advance(self, service: str, st: _ServiceState) -> list[VerdictRecord]:
        b = st.buckets
        if b.max_time is None:
            wm = b.watermark
        else:  # inlined `watermark`
            wm = b.max_time - b.lateness
            if b.flushed_to is not None and b.flushed_to > wm:
                wm = b.flushed_to
        if wm < st.next_due and wm < st.next_compact and wm < st.next_evict:
            return []  # the common case, once per sample: nothing is due
        out: list[VerdictRecord] = []
        while wm >= st.next_due:
            # One look at a time, earliest due first (ties: older release first), so records come
            # out in the same order however many looks one call covers.
            due, _, rs = min(
                (
                    (self._next_due(st, x), x.key, x)
                    for x in st.releases.values()
                    if not x.finalized
                ),
                key=lambda item: item[:2],
                default=(math.inf, (0.0, ""), None),
            )
            st.next_due = due
            if rs is not None and due <= wm:
                out.extend(self._step(st, rs))
        width = min(k.bucket_seconds for k in st.specs)
        if wm >= st.next_compact:
            if st.buckets.compact():
                self._dirty.add(service)
            st.next_compact = wm + width
        if wm >= st.next_evict:
            # Eviction scans all history, so it runs once per chunk of buckets; reads mask by
            # horizon anyway, so how often it runs changes memory, never a verdict.
            dropped = st.buckets.evict()
            # A finalized release this far back can no longer overlap any release still accepted.
            limit = wm - self._retention - 2 * self._reach(st)
            old = [i for i, rs in st.releases.items() if rs.finalized and rs.release.time < limit]
            for rid in old:
                del st.releases[rid]
            if dropped or old:
                self._dirty.add(service)
            st.next_evict = wm + CHUNK * width
        if out:
            self._dirty.add(service)
        return out

    def _reach(self, st: _ServiceState) -> float:
        """How far apart two releases of the service may be and still matter to each other."""
        return max(
            max(k.baseline_seconds, k.max_horizon_seconds, k.overlap_seconds) for k in st.specs
        )

    def _schedule(self, st: _ServiceState) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The looks' elapsed seconds after a release and their z boundaries."""
        width = max(k.bucket_seconds for k in st.specs)
        first = max(k.post_seconds for k in st.specs)
        horizon = max(max(k.max_horizon_seconds, k.post_seconds) for k in st.specs)
        return schedule_boundaries(
            self.alpha, first, horizon, self.interim_every_buckets * width, SPENDING_RHO
        )

    def _neighbours(self, st: _ServiceState, r: Release) -> tuple[float | None, float | None]:
        """Times of the service's previous and next releases around `r` (None when none)."""
        prev: float | None = None
        nxt: float | None = None
        for o in st.releases.values():
            t = o.release.time
            if o.release is r:
                continue
            if t < r.time or (t == r.time and o.release.id < r.id):
                prev = t if prev is None or t > prev else prev
            elif nxt is None or t < nxt:
                nxt = t
        return prev, nxt

    def _look(
        self, st: _ServiceState, rs: _ReleaseState, k: int
    ) -> tuple[float, Look, float, float, bool]:
        """(elapsed seconds, Look, due watermark, scheduled seconds, schedule end) of look `k`.

        The horizon ends at the schedule's last look or at the service's next release, whichever
        comes first; the looks from there on read the window up to it (`Look.last`). A look is
        due when the watermark passes its *scheduled* time, even when its window was cut shorter:
        by then every release that could cut or confound it has been read, in whatever order
        the input topics were read.
        """
        looks, zs = self._schedule(st)
        r = rs.release
        _, nxt = self._neighbours(st, r)
        cut = looks[-1] if nxt is None else min(looks[-1], max(nxt - r.time, 0.0))
        k = min(k, len(looks) - 1)
        elapsed = min(looks[k], cut)
        end = k == len(looks) - 1
        look = Look(zs[k], end or looks[k] >= cut, elapsed / looks[-1])
        due = max(plan_windows(spec, r.time, looks[k]).post_due() for spec in st.specs)
        return elapsed, look, due, looks[k], end

    def _next_due(self, st: _ServiceState, rs: _ReleaseState) -> float:
        return self._look(st, rs, rs.next_look)[2]

    def _step(self, st: _ServiceState, rs: _ReleaseState) -> list[VerdictRecord]:
        """Take the release's next look; the schedule's last one finalizes every KPI still open."""
        elapsed, look, due, scheduled, end = self._look(st, rs, rs.next_look)
        rs.next_look += 1
        out = self._judge_release(st, rs, elapsed, look, due, scheduled, end)
        if end or len(rs.final) == len(st.specs):
            rs.finalized = True
            self._drop_fixed(st.name, rs.release.id)
        return out

    # -- judging -----------------------------------------------------------------------------

    def _overlap(self, spec: KpiSpec, a: Release, b: Release) -> bool:
        return abs(a.time - b.time) <= spec.overlap_seconds

    def _release_scope(self, r: Release) -> str:
        for label in self.catalog.scope_labels:
            value = r.scope.get(label)
            if value is not None:
                return scope_key(label, value)
        return ""

    def _presence(
        self,
        st: _ServiceState,
        first: int,
        stop: int,
        scope: str,
        minus: str | None,
        horizon: float,
    ) -> list[bool]:
        """Per bucket, whether the service reported any sample there (any stream of the scope)."""
        seen = [False] * max(stop - first, 0)
        for stream in st.buckets.layouts:
            rd = st.buckets.read(stream, scope, first, stop, minus_scope=minus, horizon=horizon)
            for i, c in enumerate(rd.counts):
                if c > 0:
                    seen[i] = True
        return seen

    def _window(
        self,
        st: _ServiceState,
        spec: KpiSpec,
        first: int,
        stop: int,
        scope: str,
        minus: str | None,
        horizon: float,
    ) -> tuple[WindowData, int]:
        """WindowData of buckets [first, stop) and how many of them hold data.

        A bucket in which the service reported nothing is missing for every aggregation (den 0):
        an outage is not a zero.
        """
        b = st.buckets
        n = stop - first
        if spec.aggregation == "ratio":
            assert spec.numerator is not None and spec.denominator is not None
            nr = b.read(spec.numerator, scope, first, stop, minus_scope=minus, horizon=horizon)
            dr = b.read(spec.denominator, scope, first, stop, minus_scope=minus, horizon=horizon)
            num, den, counts = nr.sums, dr.sums, dr.counts
            nonempty = sum(1 for d in den if d > 0)
        else:
            assert spec.stream is not None
            r = b.read(
                spec.stream, scope, first, stop, q=spec.quantile, minus_scope=minus, horizon=horizon
            )
            counts = r.counts
            if spec.aggregation == "sum":
                present = self._presence(st, first, stop, scope, minus, horizon)
                num, den = r.sums, [1.0 if x else 0.0 for x in present]
                nonempty = sum(present)
            elif spec.aggregation == "mean":
                num, den = r.sums, counts
                nonempty = sum(1 for c in counts if c > 0)
            else:
                qs = r.quantiles or [None] * n
                num = [v if v is not None else 0.0 for v in qs]
                den = [1.0 if v is not None else 0.0 for v in qs]
                nonempty = sum(1 for c in counts if c > 0)
        w = spec.bucket_seconds
        data = WindowData(
            first * w, stop * w, tuple(num), tuple(den), math.fsum(counts), tuple(counts)
        )
        return data, nonempty

    def _fixed_windows(
        self, st: _ServiceState, rs: _ReleaseState, spec: KpiSpec, horizon: float
    ) -> _Fixed:
        """The release's baseline and candidate references for `spec`, read once (closed data)."""
        r = rs.release
        key = (st.name, r.id, spec.name)
        got = self._fixed.get(key)
        if got is not None:
            return got
        prev, _ = self._neighbours(st, r)
        first_seen = self._first_seen(st, spec)
        after = prev if prev is not None else None
        if math.isfinite(first_seen):
            after = first_seen if after is None else max(after, first_seen)
        plan = plan_windows(spec, r.time, None, after)
        full = plan_windows(spec, r.time, spec.max_horizon_seconds, after)
        scope = self._release_scope(r)
        base, nb = self._window(st, spec, plan.base_first, plan.base_stop, scope, None, horizon)
        refs: list[_Ref] = []
        for name, days in _SEASONS[spec.seasonality]:
            k = round(days * DAY_SECONDS / plan.width)
            lo, hi = (plan.base_first - k) * plan.width, (full.post_stop - k) * plan.width
            if lo < first_seen:
                continue  # before the stream's first sample: no history, not zeros
            span = (plan.base_first * plan.width, full.post_stop * plan.width)
            if name == "daily" and not _same_days(span[0], r.time, span[1], days):
                # Another kind of day at the same hours (a Sunday for a Monday, or a span that
                # crosses the Sunday->Monday step where this one does not): its shape is not
                # this day's. Only the week-ago windows stand for any day; such a day serves only
                # when nothing else does, over short windows, its spread against the other
                # days counted as noise (see `_judge_release`).
                name = OTHER_DAY
            bref, _ = self._window(
                st, spec, plan.base_first - k, plan.base_stop - k, scope, None, horizon
            )
            pref, _ = self._window(
                st, spec, full.post_first - k, full.post_stop - k, scope, None, horizon
            )
            # A reference stands for "the same hours without a release". A release of the service
            # on that day splits it: its baseline is used only after that release, its post window
            # only before it (see `_judge_release`), so no step of another release is read.
            cut, clean = 0, len(pref.num)
            for o in st.releases.values():
                tau = o.release.time
                if o.release is r or not lo <= tau < hi:
                    continue
                if tau < bref.end:
                    cut = max(cut, math.ceil((tau - bref.start) / plan.width - 1e-9))
                else:
                    clean = min(clean, max(0, math.floor((tau - pref.start) / plan.width + 1e-9)))
            refs.append((name, days, bref, pref, cut, clean, None))
        refs = _level_adjusted(st, r, plan, full, refs)
        if scope:
            bref, _ = self._window(st, spec, plan.base_first, plan.base_stop, "", scope, horizon)
            pref, _ = self._window(st, spec, full.post_first, full.post_stop, "", scope, horizon)
            refs.append(("control", 0, bref, pref, 0, len(pref.num), None))
        got = _Fixed(plan.base_first, base, nb, tuple(refs), "")
        self._fixed[key] = got
        return got

    def _drop_fixed(self, service: str, release_id: str | None = None) -> None:
        for key in [k for k in self._fixed if k[0] == service and release_id in (None, k[1])]:
            del self._fixed[key]

    def _first_seen(self, st: _ServiceState, spec: KpiSpec) -> float:
        """Event time from which every stream of `spec` has history (-inf when unknown)."""
        firsts = [st.buckets.first_seen.get(name) for name in spec.streams()]
        return max((f for f in firsts if f is not None), default=-math.inf)

    def _judge_release(
        self,
        st: _ServiceState,
        rs: _ReleaseState,
        elapsed: float,
        look: Look,
        due: float,
        scheduled: float,
        end: bool,
    ) -> list[VerdictRecord]:
        r = rs.release
        # History older than this horizon reads as empty, whenever eviction actually ran.
        horizon = max(due, rs.seen_wm) - self._retention
        scope = self._release_scope(r)
        out: list[VerdictRecord] = []
        for spec in st.specs:
            if spec.name in rs.final:
                continue
            fixed = self._fixed_windows(st, rs, spec, horizon)
            kpi_look = look
            # No earlier day of the same kind: days of other kinds, or the rest of the traffic
            # (another region lives in another time zone), share the shape of the day only over
            # short windows.
            fallback = spec.seasonality != "none" and not any(
                x[0] not in _SHORT_REFERENCES for x in fixed.refs
            )
            if fallback and elapsed >= FALLBACK_SECONDS:
                elapsed = max(FALLBACK_SECONDS, min(spec.post_seconds, elapsed))
                kpi_look = dataclasses.replace(look, last=True)
            reach = _reference_reach(fixed, spec, fallback)
            if reach is not None and elapsed >= reach:
                # Every reference day has a release of its own by then: the look there is the
                # last this KPI can take with a reference.
                elapsed = max(reach, min(spec.post_seconds, elapsed))
                kpi_look = dataclasses.replace(look, last=True)
            plan = plan_windows(spec, r.time, elapsed)
            n_post = plan.post_stop - plan.post_first
            post, np_ = self._window(
                st, spec, plan.post_first, plan.post_stop, scope, None, horizon
            )
            others = tuple(
                sorted(
                    o.release.id
                    for o in st.releases.values()
                    if o is not rs and self._overlap(spec, r, o.release)
                )
            )
            seasonal: str | None = None
            if fixed.base_first * plan.width < rs.seen_wm - self._retention:
                # Judging what is left would compare against a truncated baseline: never that.
                j = _history_lost(spec)
            elif fixed.base.samples <= 0 and post.samples <= 0:
                j = _no_data(spec)
            else:
                cut, refs = _usable_references(fixed, n_post, spec, fallback)
                # The concurrent control's post window is live data: read it at every look (the
                # cached one was read when the look's buckets were still to come).
                refs = [
                    dataclasses.replace(
                        ref,
                        post=self._window(
                            st, spec, plan.post_first, plan.post_stop, "", scope, horizon
                        )[0],
                    )
                    if ref.label == "control"
                    else ref
                    for ref in refs
                ]
                base = _tail(fixed.base, cut)
                n_base = sum(1 for d in base.den if d > 0)
                refs = [ref for ref in refs if _covers(ref.base, n_base) and _covers(ref.post, np_)]
                if refs or spec.seasonality == "none":
                    j = self._judge(spec, base, post, refs, look=kpi_look, alpha=self.alpha)
                else:
                    # No day of the same kind at these hours yet: the shape of the day (a morning
                    # ramp, the Sunday->Monday step) would be read as the release's effect.
                    j = _no_reference(spec)
                    kpi_look = dataclasses.replace(look, last=True)
                seasonal = _kind(j.reference)
                if fixed.note:
                    j = dataclasses.replace(j, reason=j.reason + fixed.note)
            if others:
                j = _confound(j, others)
            # A decision before the overlap reach has passed is interim: a release within reach
            # may still come (in any order across the input topics) and confound it; at the look
            # past the reach it is final, so the final verdict never depends on that order.
            decided = j.verdict in ("improved", "degraded", "neutral", "confounded")
            settled = scheduled >= spec.overlap_seconds
            final = end or ((decided or kpi_look.last) and settled)
            if not final:
                last = rs.interim.get(spec.name)
                if last is not None and last[0] == j.verdict:
                    continue
                revision = last[1] + 1 if last is not None else 1
                rs.interim[spec.name] = (j.verdict, revision)
            else:
                revision = 1
            w = plan.width
            extra: dict[str, str] = {"kind": r.kind}
            if scope:
                extra["scope"] = scope
            rec = VerdictRecord(
                release_id=r.id,
                service=r.service,
                product=self.catalog.product_of(r.service),
                version=r.version,
                release_time=r.time,
                kpi=spec.name,
                critical=spec.critical,
                phase="final" if final else "interim",
                revision=revision,
                baseline_window=(
                    base.start if j.reference else fixed.base_first * w,
                    plan.base_stop * w,
                ),
                post_window=(plan.post_first * w, plan.post_stop * w),
                judgement=j,
                seasonal_reference=seasonal,
                extra=extra,
            )
            if final:
                rs.final[spec.name] = rec
            out.append(rec)
        return out

    # -- persistence -------------------------------------------------------------------------

    def services(self) -> list[str]:
        """Services the engine holds state for."""
        return sorted(self._states)

    def dirty_services(self) -> set[str]:
        """Services whose state changed since the last `clear_dirty`."""
        return set(self._dirty)

    def clear_dirty(self) -> None:
        """Forget which services changed (after the caller stored their snapshots)."""
        self._dirty.clear()

    def forget(self, service: str) -> None:
        """Drop the service's in-memory state (another worker owns it now)."""
        self._states.pop(service, None)
        self._dirty.discard(service)
        self._drop_fixed(service)

    def snapshot(self, service: str) -> bytes:
        """The service's whole state (buckets, watermark, releases, emitted revisions) as bytes.

        Raises:
            KeyError: the engine holds no state for `service`.
        """
        st = self._states[service]
        releases = [
            {
                "release": dataclasses.asdict(rs.release),
                "seen_wm": rs.seen_wm if math.isfinite(rs.seen_wm) else None,
                "next": rs.next_look,
                "finalized": rs.finalized,
                "interim": [[k, v, n] for k, (v, n) in sorted(rs.interim.items())],
                "final": [dataclasses.asdict(rs.final[k]) for k in sorted(rs.final)],
            }
            for rs in sorted(st.releases.values(), key=lambda x: x.key)
        ]
        meta = orjson.dumps({"v": 1, "service": service, "releases": releases})
        payload = struct.pack("<I", len(meta)) + meta + st.buckets.dump()
        return _MAGIC + zlib.compress(payload, 1)

    def restore(self, service: str, data: bytes) -> None:
        """Replace the service's state with a `snapshot` of it.

        Raises:
            ValueError: `data` is not a snapshot of `service`.
        """
        if not data.startswith(_MAGIC):
            raise ValueError("not an impact engine snapshot")
        payload = zlib.decompress(data[len(_MAGIC) :])
        (n,) = struct.unpack_from("<I", payload, 0)
        meta = orjson.loads(payload[4 : 4 + n])
        if meta.get("v") != 1 or meta.get("service") != service:
            raise ValueError(f"snapshot is not of service {service!r} (format v1)")
        self._states.pop(service, None)
        self._drop_fixed(service)  # derived from the state being replaced
        st = self._state(service)
        if st is None:
            raise ValueError(f"no KPI of the catalog applies to service {service!r}")
        st.buckets.load(payload[4 + n :])
        for item in meta["releases"]:
            rs = _ReleaseState(
                _release_from(item["release"]),
                seen_wm=item["seen_wm"] if item["seen_wm"] is not None else -math.inf,
                next_look=item["next"],
                finalized=item["finalized"],
                interim={k: (v, n) for k, v, n in item["interim"]},
                final={rec["kpi"]: _record_from(rec) for rec in item["final"]},
            )
            st.releases[rs.release.id] = rs
        st.next_due = min(
            (self._next_due(st, rs) for rs in st.releases.values() if not rs.finalized),
            default=math.inf,
        )

    def bucket_totals(
        self, services: Sequence[str] | None = None
    ) -> dict[str, dict[str, dict[str, float]]]:
        """Totals of the retained buckets per service and "stream/scope" (for comparing runs).

        Only buckets ending after the horizon count (what reads see), so the totals do not depend
        on when eviction last ran: two runs over the same events give equal totals.

        Args:
            services: the services to report (default: every service with state).

        Returns:
            service -> "stream/scope" -> {"buckets": non-empty buckets, "count": sum of sample
            counts, "sum": sum of sample values}.
        """
        out: dict[str, dict[str, dict[str, float]]] = {}
        for service in sorted(self._states if services is None else services):
            st = self._states.get(service)
            if st is None:
                continue
            per: dict[str, dict[str, float]] = {}
            for stream in sorted(st.buckets.layouts):
                for scope in st.buckets.scopes(stream):
                    rows = self.bucket_rows(service, stream, scope)
                    per[f"{stream}/{scope}"] = {
                        "buckets": float(len(rows)),
                        "count": math.fsum(r[1] for r in rows),
                        "sum": math.fsum(r[2] for r in rows),
                    }
            out[service] = per
        return out

    def bucket_rows(self, service: str, stream: str, scope: str) -> list[tuple[int, float, float]]:
        """The retained non-empty buckets of one series as (index, count, sum), oldest first."""
        st = self._states.get(service)
        newest = st.buckets.max_time if st is not None else None
        if st is None or newest is None or stream not in st.buckets.layouts:
            return []
        b = st.buckets
        width = b.layouts[stream].bucket_seconds
        lo = math.floor(b.horizon / width)  # reads see nothing before the horizon
        first_seen = b.first_seen.get(stream)
        if first_seen is not None:
            lo = max(lo, math.floor(first_seen / width))
        rd = b.read(stream, scope, lo, math.floor(newest / width) + 1)
        return [
            (lo + i, c, v) for i, (c, v) in enumerate(zip(rd.counts, rd.sums, strict=True)) if c
        ]

    # -- reading (the web view and the static report) ------------------------------------------

    def release_states(
        self, service: str | None = None
    ) -> list[tuple[Release, bool, dict[str, VerdictRecord], dict[str, Verdict]]]:
        """Releases held, oldest first.

        Returns:
            (release, finalized, final record per KPI, latest interim verdict per KPI) each.
        """
        names = [service] if service is not None else sorted(self._states)
        return [
            (rs.release, rs.finalized, dict(rs.final), {k: v for k, (v, _) in rs.interim.items()})
            for name in names
            if (st := self._states.get(name)) is not None
            for rs in sorted(st.releases.values(), key=lambda x: x.key)
        ]

    def release_windows(self, release_id: str) -> list[KpiWindows]:
        """Per KPI of a held release: its windows and the reference the judge would pick now.

        Reads only, changes nothing; empty when the engine does not hold the release.
        """
        found: list[KpiWindows] = []
        for st in self._states.values():
            rs = st.releases.get(release_id)
            if rs is None:
                continue
            r, horizon = rs.release, st.buckets.horizon
            scope = self._release_scope(r)
            out = []
            for spec in st.specs:
                fixed = self._fixed_windows(st, rs, spec, horizon)
                rec = rs.final.get(spec.name)
                if rec is not None:
                    end = rec.post_window[1]
                else:
                    end = self._look(st, rs, max(rs.next_look - 1, 0))[1].info_fraction
                    end = r.time + end * max(spec.max_horizon_seconds, spec.post_seconds)
                plan = plan_windows(spec, r.time, max(end - r.time, 0.0))
                post, _ = self._window(
                    st, spec, plan.post_first, plan.post_stop, scope, None, horizon
                )
                n = plan.post_stop - plan.post_first
                ref = fixed.refs[0] if fixed.refs else None
                label = rec.judgement.reference if rec is not None else None
                out.append(
                    KpiWindows(
                        spec,
                        fixed.base,
                        post,
                        ref[2] if ref else None,
                        _head(ref[3], n) if ref else None,
                        label or (ref[0] if ref else None),
                    )
                )
            if not rs.finalized:
                self._drop_fixed(st.name, r.id)  # a read changes nothing
            found.extend(out)
        return found


_Ref = tuple[str, int, WindowData, WindowData, int, int, tuple[AdjustedDay, int] | None]


@dataclasses.dataclass(frozen=True, slots=True)
class _Fixed:
    """A release's windows for one KPI that no later look changes."""

    base_first: int
    base: WindowData
    n_base: int  # baseline buckets with data
    # (label, days, base, full post, baseline buckets to skip, post buckets before a release,
    # the day's adjustment and where its post starts in it, when its releases were taken out)
    refs: tuple[_Ref, ...]
    note: str


def _level_adjusted(
    st: _ServiceState,
    r: Release,
    plan: _Plan,
    full: _Plan,
    refs: list[_Ref],
) -> list[_Ref]:
    """Reference days whose own releases are taken out (stream_app.core.profile), so they serve
    over the whole span instead of up to their first release.

    All the days share one fit of the shape of the hours, robust to a day of another shape.
    """
    w = plan.width
    off = plan.post_first - plan.base_first
    span = full.post_stop - plan.base_first
    out = list(refs)
    # Midnights inside the span: the level of the day may step there (weekday levels), so a
    # segment starts there on every day and its step is kept.
    lo0 = plan.base_first * w
    breaks = [
        math.ceil((day * DAY_SECONDS - lo0) / w - 1e-9)
        for day in range(math.ceil(lo0 / DAY_SECONDS), math.ceil((lo0 + span * w) / DAY_SECONDS))
    ]
    for group in ([i for i, x in enumerate(refs) if x[0] != OTHER_DAY],):
        if len(group) < MIN_SHAPE_DAYS:
            continue  # the shape of the hours cannot be told apart from a day's own steps
        nums, dens, splits = [], [], []
        for i in group:
            _, days, bref, pref, _, _, _ = refs[i]
            lo = bref.start
            num = [0.0] * span
            den = [0.0] * span
            num[: len(bref.num)] = bref.num
            den[: len(bref.den)] = bref.den
            num[off : off + len(pref.num)] = pref.num
            den[off : off + len(pref.den)] = pref.den
            cuts = [
                math.floor((o.release.time - lo) / w)
                for o in st.releases.values()
                if o.release is not r and lo <= o.release.time < lo + span * w
            ]
            nums.append(num)
            dens.append(den)
            splits.append(cuts)
        if not any(splits):
            continue
        adjusted = level_adjust(nums, dens, splits, off, breaks)
        nb = plan.base_stop - plan.base_first
        for j, i in enumerate(group):
            if not splits[j]:
                continue
            name, days, bref, pref, _, _, _ = refs[i]
            a = adjusted[j]
            np_ = len(pref.num)
            out[i] = (
                name,
                days,
                _replaced(bref, a.num[:nb], a.den[:nb]),
                _replaced(pref, a.num[off : off + np_], a.den[off : off + np_]),
                0,
                np_,
                (a, off),
            )
    return out


def _replaced(win: WindowData, num: Iterable[float], den: Iterable[float]) -> WindowData:
    """`win` with new bucket values (buckets left out: counts 0 too)."""
    dens = tuple(float(x) for x in den)
    counts = tuple(c if d > 0 else 0.0 for c, d in zip(win.counts, dens, strict=False))
    return WindowData(
        win.start,
        win.end,
        tuple(float(x) for x in num),
        dens,
        math.fsum(counts) if counts else win.samples,
        counts,
    )


def _head(w: WindowData, n: int) -> WindowData:
    """The first `n` buckets of a window."""
    if n >= len(w.num):
        return w
    counts = w.counts[:n]
    width = (w.end - w.start) / len(w.num) if w.num else 0.0
    return WindowData(w.start, w.start + n * width, w.num[:n], w.den[:n], math.fsum(counts), counts)


def _day_kind(t: float) -> int:
    """Monday (0), Tuesday-Friday (1), Saturday (2), Sunday (3), in UTC."""
    weekday = (math.floor(t / DAY_SECONDS) + 3) % 7  # 1970-01-01 was a Thursday
    return 0 if weekday == 0 else 1 if weekday < 5 else weekday - 3


def _same_days(lo: float, mid: float, hi: float, days: int) -> bool:
    """Whether the span [lo, hi) around `mid` and the same span `days` earlier see the same
    kinds of day at its start, at the release and at its end."""
    back = days * DAY_SECONDS
    return all(_day_kind(t) == _day_kind(t - back) for t in (lo, mid, hi - 1.0))


def _tail(w: WindowData, cut: int) -> WindowData:
    """The window without its first `cut` buckets."""
    if cut <= 0:
        return w
    width = (w.end - w.start) / len(w.num) if w.num else 0.0
    counts = w.counts[cut:]
    return WindowData(
        w.start + cut * width, w.end, w.num[cut:], w.den[cut:], math.fsum(counts), counts
    )


# The shortest baseline a reference may leave after the release it holds (see `_usable`).
MIN_REFERENCE_BASE_SECONDS = 3600.0
# Days of another kind (a reference of last resort) serve over windows this short.
FALLBACK_SECONDS = 3600.0
OTHER_DAY = "other-day"
# Days of the judged day's kind needed to take reference days' own releases out (see
# `_level_adjusted`); with fewer, a reference day serves up to its first release.
MIN_SHAPE_DAYS = 2
_SHORT_REFERENCES = (OTHER_DAY, "control")


def _usable_references(
    fixed: _Fixed, n_post: int, spec: KpiSpec, fallback: bool = False
) -> tuple[int, list[Reference]]:
    """The references clean over this look's windows, and the baseline buckets to skip for them.

    A reference whose post window holds a release before this look's end is left out. One whose
    baseline holds a release is used after it only, and so is the release's own baseline: the
    week-ago windows set where the baseline starts when they are usable, else the median of the
    earlier days' starts; references starting later than that are left out, and none may leave
    less than an hour of baseline. `fallback`: only days of another kind exist, and serve over
    the last hour of the baseline.
    """
    n_base = len(fixed.base.num)
    least = _least_base(n_base, spec)
    pool = [x for x in fixed.refs if fallback or x[0] != OTHER_DAY]
    floor = max(0, n_base - least) if fallback else 0
    ok = [x for x in pool if x[5] >= n_post and n_base - max(x[4], floor) >= least]
    if not ok:
        return 0, []
    weekly = [x for x in ok if x[0] == "weekly"]
    cuts = sorted(max(x[4], floor) for x in ok)
    cut = max(weekly[0][4], floor) if weekly else cuts[(len(cuts) - 1) // 2]
    chosen = [x for x in ok if max(x[4], floor) <= cut]
    return cut, [
        Reference(
            "daily" if name == OTHER_DAY else name,
            days,
            _tail(bref, cut),
            _head(pref, n_post),
            adj[0].extra_var(cut, n_base, adj[1], adj[1] + n_post) if adj else 0.0,
        )
        for name, days, bref, pref, _, _, adj in chosen
    ]


def _least_base(n_base: int, spec: KpiSpec) -> int:
    """The fewest baseline buckets a reference may leave (an hour, at least min_buckets)."""
    return min(
        n_base, max(spec.min_buckets, round(MIN_REFERENCE_BASE_SECONDS / spec.bucket_seconds))
    )


def _reference_reach(fixed: _Fixed, spec: KpiSpec, fallback: bool = False) -> float | None:
    """How far after the release some reference stays clean (None: no seasonal references)."""
    n_base = len(fixed.base.num)
    least = _least_base(n_base, spec)
    floor = max(0, n_base - least) if fallback else 0
    clean = [
        x[5]
        for x in fixed.refs
        if (fallback or x[0] != OTHER_DAY) and n_base - max(x[4], floor) >= least
    ]
    if not clean:
        return None
    return max(clean) * spec.bucket_seconds


def _covers(ref: WindowData, judged: int) -> bool:
    """A reference is used only when it holds data in most of the buckets the judged one does."""
    got = sum(1 for d in ref.den if d > 0)
    return got >= max(1, math.ceil(REFERENCE_COVERAGE * judged))


def _kind(label: str | None) -> str | None:
    """The record's seasonal_reference: "weekly", "daily", "control" or None."""
    if label is None:
        return None
    if "weekly" in label:
        return "weekly"
    return "daily" if "daily" in label or "other" in label else label


def _pool(windows: Sequence[WindowData]) -> WindowData:
    """Windows of the same hours on different days summed bucket by bucket (one pooled day).

    Bucket i's value stays num/den: the mean over the days for sum and quantile KPIs (den = 1 per
    day with data), the ratio of pooled sums for ratio and mean KPIs.
    """
    first = windows[0]
    if len(windows) == 1:
        return first
    return WindowData(
        first.start,
        first.end,
        tuple(math.fsum(c) for c in zip(*(w.num for w in windows), strict=True)),
        tuple(math.fsum(c) for c in zip(*(w.den for w in windows), strict=True)),
        math.fsum(w.samples for w in windows),
    )


def _release_from(d: dict[str, Any]) -> Release:
    """A Release from its dataclasses.asdict JSON form (lists back to tuples)."""
    return Release(
        **{
            **d,
            "commits": tuple(d["commits"]),
            "change_ids": tuple(d["change_ids"]),
            "links": tuple(d.get("links", ())),
            "expect": tuple(Expectation(**e) for e in d.get("expect", ())),
        }
    )


def _record_from(d: dict[str, Any]) -> VerdictRecord:
    """A VerdictRecord from its dataclasses.asdict JSON form (lists back to tuples)."""
    j = d["judgement"]
    judgement = KpiJudgement(**{**j, "confounders": tuple(j["confounders"])})
    return VerdictRecord(
        **{
            **d,
            "judgement": judgement,
            "baseline_window": tuple(d["baseline_window"]),
            "post_window": tuple(d["post_window"]),
        }
    )


@dataclasses.dataclass(frozen=True, slots=True)
class KpiWindows:
    """One KPI's windows around a release, as `ImpactEngine.release_windows` reads them."""

    spec: KpiSpec
    baseline: WindowData
    post: WindowData
    baseline_ref: WindowData | None  # the reference's baseline, shifted back by its lag
    post_ref: WindowData | None
    reference: str | None  # "weekly", "daily, ...", "control" or None (no usable reference)
