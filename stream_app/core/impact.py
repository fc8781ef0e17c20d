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
passes its post window it is judged ``inconclusive`` with reason ``no-data`` (releases move the
watermark too). Two releases of one service closer than a KPI's max(baseline, post) are
``confounded`` on that KPI, both naming each other; when the second arrives after the first's final
verdict, a revision of that verdict is emitted. A release scoped to a label value
(``{"region": "eu"}``: the first configured scope label it names) is judged on that scope's
buckets, with its own seasonal reference when one is clean, else with the rest of the traffic as a
concurrent control when the rest holds enough data.

Seasonal references
-------------------
A reference stands for "the same hours, without this release": the week-ago windows when they hold
data (a Monday-morning rise is only explained by last Monday), else every earlier day within the
retained week whose windows hold data, pooled bucket by bucket (more days, less reference noise).
A candidate whose windows contain another release of the service is skipped: its step would be
read, with the opposite sign, as this release's effect (with a release every few hours that
happened to most day-ago references). So is one reaching back before the stream's first sample:
missing history is not zero traffic. The rest of the traffic comes after the scope's own history
because it need not share the shape of the day: another region's morning ramp comes hours apart.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import orjson

from stream_app.core.buckets import CHUNK, SampleOutcome, ServiceBuckets, layouts_for, scope_key
from stream_app.core.catalog import DAY_SECONDS, Catalog
from stream_app.core.stats import interim_threshold
from stream_app.core.types import (
    KpiJudgement,
    KpiSpec,
    Phase,
    Verdict,
    VerdictRecord,
    WindowData,
)
from stream_app.events.model import KpiSample, Release

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


class JudgeFn(Protocol):
    """The judge's signature (stream_app.core.judge.judge_kpi)."""

    def __call__(
        self,
        spec: KpiSpec,
        base: WindowData,
        post: WindowData,
        *,
        base_ref: WindowData | None = None,
        post_ref: WindowData | None = None,
        seasonal: str | None = None,
        alpha: float = 0.05,
        info_fraction: float = 1.0,
    ) -> KpiJudgement: ...


class AdjustFn(Protocol):
    """False-discovery control across one release's KPIs (stream_app.core.judge.adjust_release)."""

    def __call__(
        self, judgements: Sequence[KpiJudgement], *, alpha: float = 0.05
    ) -> list[KpiJudgement]: ...


@dataclasses.dataclass(slots=True)
class _ReleaseState:
    release: Release
    seen_wm: float  # the service watermark when the release was registered
    next_checkpoint: int = 1
    finalized: bool = False
    interim: dict[str, tuple[Verdict, int]] = dataclasses.field(default_factory=dict)
    final: dict[str, VerdictRecord] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> tuple[float, str]:
        return (self.release.time, self.release.id)


@dataclasses.dataclass(slots=True)
class _ServiceState:
    buckets: ServiceBuckets
    specs: tuple[KpiSpec, ...]
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


def plan_windows(spec: KpiSpec, time: float, elapsed: float | None = None) -> _Plan:
    """Windows of `spec` around a release at `time`.

    Baseline is [t - baseline, t) and post [t, t + post), on bucket boundaries; a release time that
    is not on a boundary skips the bucket it falls in (half before, half after the release).
    For an interim look, the post window is cut to the `elapsed` seconds after its start.
    """
    w = spec.bucket_seconds
    i0 = math.floor(time / w)
    post_first = i0 if i0 * w == time else i0 + 1
    n_base = round(spec.baseline_seconds / w)
    n_post = round(spec.post_seconds / w)
    n = n_post if elapsed is None else min(n_post, math.floor(elapsed / w + 1e-9))
    return _Plan(w, i0 - n_base, i0, post_first, post_first + n, n_post)


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
        alpha: float = 0.05,
        interim_every_buckets: int = 10,
        judge: JudgeFn | None = None,
        adjust: AdjustFn | None = None,
    ) -> None:
        """Build an engine.

        Args:
            catalog: the validated KPI catalog.
            alpha: significance level handed to the judge and to the false-discovery control.
            interim_every_buckets: an interim look every this many post buckets (0: none).
            judge: the per-KPI judge; defaults to ``stream_app.core.judge.judge_kpi``.
            adjust: the across-KPI adjustment; defaults to ``stream_app.core.judge.adjust_release``.
        """
        if interim_every_buckets < 0:
            raise ValueError("interim_every_buckets must be >= 0")
        if judge is None or adjust is None:
            # Imported here so the engine can be tested with a stub judge on its own.
            from stream_app.core import judge as judge_module

            judge = judge or judge_module.judge_kpi
            adjust = adjust or judge_module.adjust_release
        self.catalog = catalog
        self.alpha = alpha
        self.interim_every_buckets = interim_every_buckets
        self._judge: JudgeFn = judge
        self._adjust: AdjustFn = adjust
        self._retention = catalog.retention_seconds()
        self._states: dict[str, _ServiceState] = {}
        self._dirty: set[str] = set()

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
            st = self._states[service] = _ServiceState(buckets, specs)
        return st

    def on_sample(self, s: KpiSample) -> SampleOutcome:
        """Put a KPI sample in its event-time bucket.

        Returns:
            "accepted", or why not: "late", "unknown-stream" (no KPI of the service reads it),
            "out-of-scope" (no KPI applies to the service), "invalid-value",
            "too-many-label-values".
        """
        st = self._states.get(s.service) or self._state(s.service)
        if st is None:
            return "out-of-scope"
        outcome = st.buckets.add(s.kpi, s.time, s.value, s.count, s.labels)
        if outcome == "accepted":
            self._dirty.add(s.service)
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
        for i, s in enumerate(samples):
            if admit is not None:
                refused = admit(s)
                if refused is not None:
                    append(refused)
                    continue
            service = s.service
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

    def add_release(self, r: Release) -> tuple[ReleaseOutcome, list[VerdictRecord]]:
        """Register a release.

        Returns:
            The outcome, and the records emitted: verdicts that were already due, and revisions of
            final verdicts that this release now confounds.
        """
        st = self._state(r.service)
        if st is None:
            return "out-of-scope", []
        # Whatever was due before this release is judged without it, as if advance ran just now.
        out = self._advance(r.service, st)
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
        st.releases[r.id] = rs
        if self.interim_every_buckets > 0:
            # Looks that were due before the release was known are skipped, not replayed in a burst.
            wm = st.buckets.watermark
            while (cp := self._checkpoint(st, rs, rs.next_checkpoint)) is not None and cp[1] <= wm:
                rs.next_checkpoint += 1
        st.next_due = min(st.next_due, self._next_due(st, rs))
        self._dirty.add(r.service)
        for other in sorted(st.releases.values(), key=lambda x: x.key):
            if other is rs or not other.finalized:
                continue
            for spec in st.specs:
                rec = other.final.get(spec.name)
                if rec is None or not self._overlap(spec, other.release, r):
                    continue
                if r.id in rec.judgement.confounders:
                    continue
                ids = tuple(sorted({*rec.judgement.confounders, r.id}))
                new = dataclasses.replace(
                    rec, revision=rec.revision + 1, judgement=_confound(rec.judgement, ids)
                )
                other.final[spec.name] = new
                out.append(new)
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
        """How far apart two releases of the service may be and still confound each other."""
        return max(max(k.baseline_seconds, k.post_seconds) for k in st.specs)

    def _final_due(self, st: _ServiceState, rs: _ReleaseState) -> float:
        return max(plan_windows(k, rs.release.time).post_due() for k in st.specs)

    def _checkpoint(
        self, st: _ServiceState, rs: _ReleaseState, j: int
    ) -> tuple[float, float] | None:
        """(elapsed seconds, due watermark) of interim look `j`, or None when it would be final."""
        n = self.interim_every_buckets
        if n <= 0:
            return None
        elapsed = j * n * max(k.bucket_seconds for k in st.specs)
        if elapsed >= max(k.post_seconds for k in st.specs):
            return None
        due = max(plan_windows(k, rs.release.time, elapsed).post_due() for k in st.specs)
        if due >= self._final_due(st, rs):
            return None
        return elapsed, due

    def _next_due(self, st: _ServiceState, rs: _ReleaseState) -> float:
        cp = self._checkpoint(st, rs, rs.next_checkpoint)
        return cp[1] if cp is not None else self._final_due(st, rs)

    def _step(self, st: _ServiceState, rs: _ReleaseState) -> list[VerdictRecord]:
        """Take the release's next look: an interim one, or the final one."""
        cp = self._checkpoint(st, rs, rs.next_checkpoint)
        if cp is not None:
            rs.next_checkpoint += 1
            return self._judge_release(st, rs, "interim", cp[0], cp[1])
        rs.finalized = True
        return self._judge_release(st, rs, "final", None, self._final_due(st, rs))

    # -- judging -----------------------------------------------------------------------------

    def _overlap(self, spec: KpiSpec, a: Release, b: Release) -> bool:
        return abs(a.time - b.time) <= max(spec.baseline_seconds, spec.post_seconds)

    def _release_scope(self, r: Release) -> str:
        for label in self.catalog.scope_labels:
            value = r.scope.get(label)
            if value is not None:
                return scope_key(label, value)
        return ""

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
        """WindowData of buckets [first, stop) and how many of them hold data."""
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
            nonempty = sum(1 for c in counts if c > 0)
            if spec.aggregation == "sum":
                num, den = r.sums, [1.0] * n
            elif spec.aggregation == "mean":
                num, den = r.sums, counts
            else:
                qs = r.quantiles or [None] * n
                num = [v if v is not None else 0.0 for v in qs]
                den = [1.0 if v is not None else 0.0 for v in qs]
        w = spec.bucket_seconds
        data = WindowData(first * w, stop * w, tuple(num), tuple(den), math.fsum(counts))
        return data, nonempty

    def _first_seen(self, st: _ServiceState, spec: KpiSpec) -> float:
        """Event time from which every stream of `spec` has history (-inf when unknown)."""
        firsts = [st.buckets.first_seen.get(name) for name in spec.streams()]
        return max((f for f in firsts if f is not None), default=-math.inf)

    def _references(
        self,
        st: _ServiceState,
        spec: KpiSpec,
        plan: _Plan,
        scope: str,
        horizon: float,
        covered: tuple[int, int],
        release: Release,
    ) -> tuple[WindowData | None, WindowData | None, str | None, str | None, str]:
        """The reference windows: a clean seasonal reference, else the rest of the traffic.

        Returns:
            (base_ref, post_ref, reference kind for the record, label for the judge's method,
            note on references skipped because another release falls in them).
        """

        def enough(a: int, b: int) -> bool:
            return all(
                got >= max(1, math.ceil(REFERENCE_COVERAGE * need))
                for got, need in ((a, covered[0]), (b, covered[1]))
            )

        first = self._first_seen(st, spec)
        skipped: list[str] = []
        days_found: list[int] = []
        pooled: list[tuple[WindowData, WindowData]] = []
        for name, days in _SEASONS[spec.seasonality]:
            k = round(days * DAY_SECONDS / plan.width)
            # A reference stands for "the same hours without a release": one holding a release of
            # the service carries that release's step, which the difference-in-differences would
            # credit (with the opposite sign) to this release. The next candidate is tried.
            lo, hi = (plan.base_first - k) * plan.width, (plan.post_stop - k) * plan.width
            if lo < first:
                continue  # before the stream's first sample: no history, not zeros
            inside = sorted(
                o.release.id
                for o in st.releases.values()
                if o.release is not release and lo < o.release.time < hi
            )
            if inside:
                skipped.append(f"{days}d ago ({', '.join(inside)})")
                continue
            base_ref, nb = self._window(
                st, spec, plan.base_first - k, plan.base_stop - k, scope, None, horizon
            )
            post_ref, np_ = self._window(
                st, spec, plan.post_first - k, plan.post_stop - k, scope, None, horizon
            )
            if not enough(nb, np_):
                continue
            if name == "weekly":
                # The same weekday stays alone: pooling it with other weekdays would bring back
                # the weekday-specific shape (a Monday-morning rise) it is there to remove.
                return base_ref, post_ref, name, name, ""
            days_found.append(days)
            pooled.append((base_ref, post_ref))
        note = "; seasonal references holding a release were skipped: " + ", ".join(skipped)
        note = note if skipped else ""
        if pooled:
            # Every clean earlier day at the same hours, pooled bucket by bucket: the reference's
            # share of the variance shrinks as 1/days (two windows of equal noise count twice).
            base_ref = _pool([b for b, _ in pooled])
            post_ref = _pool([p for _, p in pooled])
            if days_found == [1]:
                label = "daily"
            elif len(days_found) == 1:
                label = f"daily, {days_found[0]} days back"
            else:
                label = f"daily, {len(days_found)} days pooled: {', '.join(map(str, days_found))}"
            return base_ref, post_ref, "daily", label, ""
        if scope:
            # The rest of the traffic comes second: it shares concurrent shocks but not always the
            # shape of the day (another region lives in another time zone, so its morning ramp
            # comes hours apart), while the scope's own history shares its shape.
            base_ref, nb = self._window(
                st, spec, plan.base_first, plan.base_stop, "", scope, horizon
            )
            post_ref, np_ = self._window(
                st, spec, plan.post_first, plan.post_stop, "", scope, horizon
            )
            if enough(nb, np_):
                return base_ref, post_ref, "control", "control", note
        return None, None, None, None, note

    def _judge_release(
        self, st: _ServiceState, rs: _ReleaseState, phase: Phase, elapsed: float | None, due: float
    ) -> list[VerdictRecord]:
        r = rs.release
        # History older than this horizon reads as empty, whenever eviction actually ran.
        horizon = max(due, rs.seen_wm) - self._retention
        scope = self._release_scope(r)
        rows: list[tuple[KpiSpec, _Plan, KpiJudgement, str | None]] = []
        for spec in st.specs:
            plan = plan_windows(spec, r.time, elapsed)
            base, nb = self._window(st, spec, plan.base_first, plan.base_stop, scope, None, horizon)
            post, np_ = self._window(
                st, spec, plan.post_first, plan.post_stop, scope, None, horizon
            )
            if plan.base_first * plan.width < rs.seen_wm - self._retention:
                # Judging what is left would compare against a truncated baseline: never that.
                rows.append((spec, plan, _history_lost(spec), None))
                continue
            if base.samples <= 0 and post.samples <= 0:
                rows.append((spec, plan, _no_data(spec), None))
                continue
            first = self._first_seen(st, spec)
            if spec.aggregation == "sum" and plan.base_first * plan.width < first:
                # A sum reads a bucket without samples as 0: a baseline that starts before the
                # stream's first sample would look like a drop, and the release like a rise.
                rows.append((spec, plan, _history_missing(spec, first), None))
                continue
            base_ref, post_ref, seasonal, label, note = self._references(
                st, spec, plan, scope, horizon, (nb, np_), r
            )
            j = self._judge(
                spec,
                base,
                post,
                base_ref=base_ref,
                post_ref=post_ref,
                seasonal=label,
                alpha=self.alpha,
                info_fraction=(plan.post_stop - plan.post_first) / plan.post_full,
            )
            if note:
                j = dataclasses.replace(j, reason=j.reason + note)
            rows.append((spec, plan, j, seasonal))
        # An interim look is judged at the spending-function level, so the FDR control must be too.
        level = self.alpha
        if phase == "interim":
            least = min((p.post_stop - p.post_first) / p.post_full for _, p, _, _ in rows)
            level = interim_threshold(self.alpha, least)
        adjusted = {j.kpi: j for j in self._adjust([row[2] for row in rows], alpha=level)}
        out: list[VerdictRecord] = []
        for spec, plan, j0, seasonal in rows:
            j = adjusted.get(spec.name, j0)
            others = tuple(
                sorted(
                    o.release.id
                    for o in st.releases.values()
                    if o is not rs and self._overlap(spec, r, o.release)
                )
            )
            if others:
                j = _confound(j, others)
            if phase == "interim":
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
                version=r.version,
                release_time=r.time,
                kpi=spec.name,
                critical=spec.critical,
                phase=phase,
                revision=revision,
                baseline_window=(plan.base_first * w, plan.base_stop * w),
                post_window=(plan.post_first * w, plan.post_stop * w),
                judgement=j,
                seasonal_reference=seasonal,
                extra=extra,
            )
            if phase == "final":
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
                "next": rs.next_checkpoint,
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
        st = self._state(service)
        if st is None:
            raise ValueError(f"no KPI of the catalog applies to service {service!r}")
        st.buckets.load(payload[4 + n :])
        for item in meta["releases"]:
            rs = _ReleaseState(
                _release_from(item["release"]),
                seen_wm=item["seen_wm"] if item["seen_wm"] is not None else -math.inf,
                next_checkpoint=item["next"],
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
        for st in self._states.values():
            rs = st.releases.get(release_id)
            if rs is None:
                continue
            r, horizon = rs.release, st.buckets.horizon
            scope = self._release_scope(r)
            out = []
            for spec in st.specs:
                plan = plan_windows(spec, r.time)
                b0, b1, p0, p1 = plan.base_first, plan.base_stop, plan.post_first, plan.post_stop
                base, nb = self._window(st, spec, b0, b1, scope, None, horizon)
                post, np_ = self._window(st, spec, p0, p1, scope, None, horizon)
                base_ref, post_ref, _, label, _ = self._references(
                    st, spec, plan, scope, horizon, (nb, np_), r
                )
                out.append(KpiWindows(spec, base, post, base_ref, post_ref, label))
            return out
        return []


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
