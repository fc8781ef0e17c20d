"""Offline replay: a recorded file of events fed through the impact engine in event-time order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from stream_app.core.catalog import Catalog
from stream_app.core.impact import AdjustFn, ImpactEngine, JudgeFn
from stream_app.core.types import VerdictRecord
from stream_app.events.model import KpiSample, Release


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay produced.

    Attributes:
        verdicts: every record the engine emitted, in emission order.
        accepted: samples put in a bucket.
        late: samples older than the allowed lateness (counted, not used).
        rejected: other samples not used, by reason ("unknown-stream", "out-of-scope", ...).
        releases: releases by outcome ("accepted", "duplicate", "out-of-scope", "too-old").
        ignored: events that are neither releases nor KPI samples (workflow, incidents).
        pending: releases whose post window had not closed by the last event time of their service.
    """

    verdicts: list[VerdictRecord]
    accepted: int
    late: int
    rejected: dict[str, int]
    releases: dict[str, int]
    ignored: int
    pending: list[Release] = field(default_factory=list)


def _time(event: object) -> float:
    t = getattr(event, "time", None)
    return float(t) if isinstance(t, int | float) else float("-inf")


def replay_events(
    events: Iterable[object],
    catalog: Catalog,
    *,
    alpha: float = 0.05,
    interim_every_buckets: int = 10,
    judge: JudgeFn | None = None,
    adjust: AdjustFn | None = None,
) -> ReplayResult:
    """Replay decoded events through a fresh ImpactEngine.

    Events are stably sorted by event time (so each service sees its events in event-time order,
    ties in file order), fed one by one with an `advance` after each, as the worker does. At the
    end every service is closed up to its newest event time: releases whose post window reaches
    beyond it are reported as pending, not judged.

    Args:
        events: decoded events (Release, KpiSample; anything else is counted as ignored).
        catalog: the KPI catalog.
        alpha: significance level.
        interim_every_buckets: interim look cadence (0: final verdicts only).
        judge: the per-KPI judge (default: the real one).
        adjust: the across-KPI adjustment (default: the real one).

    Returns:
        The verdicts and counters.
    """
    engine = ImpactEngine(
        catalog,
        alpha=alpha,
        interim_every_buckets=interim_every_buckets,
        judge=judge,
        adjust=adjust,
    )
    ordered = sorted(events, key=_time)
    verdicts: list[VerdictRecord] = []
    samples: Counter[str] = Counter()
    releases: Counter[str] = Counter()
    ignored = 0
    for event in ordered:
        if isinstance(event, KpiSample):
            samples[engine.on_sample(event)] += 1
            verdicts.extend(engine.advance(event.service))
        elif isinstance(event, Release):
            outcome, records = engine.add_release(event)
            releases[outcome] += 1
            verdicts.extend(records)
            verdicts.extend(engine.advance(event.service))
        else:
            ignored += 1
    verdicts.extend(engine.close_input())
    accepted = samples.pop("accepted", 0)
    late = samples.pop("late", 0)
    return ReplayResult(
        verdicts=verdicts,
        accepted=accepted,
        late=late,
        rejected=dict(sorted(samples.items())),
        releases=dict(sorted(releases.items())),
        ignored=ignored,
        pending=engine.pending_releases(),
    )
