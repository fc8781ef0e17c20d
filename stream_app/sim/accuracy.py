"""Grade the judge against oracle truth: events -> one Pipeline (as `valueloop replay`) -> rates."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from stream_app.codec import Decoded
from stream_app.core.catalog import Catalog, KpiSpec, load_catalog
from stream_app.core.guard import Limits
from stream_app.core.types import VerdictRecord
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, replay
from stream_app.sim.truth import Truth

CALLS = frozenset({"degraded", "improved"})
MISSING = "missing"  # no final verdict for the pair


@dataclass(frozen=True, slots=True)
class Scored:
    """One (release, KPI): the truth and what the pipeline finally said.

    Attributes:
        truth: the oracle's truth.
        verdict: the latest final verdict, or ``MISSING``.
        reason: its reason code ("" when missing).
        change: its estimated change.
        first_degraded: seconds of event time from the release to the end of the post window of
            the first ``degraded`` record (interim or final), None when never degraded.
    """

    truth: Truth
    verdict: str
    reason: str
    change: float | None
    first_degraded: float | None


@dataclass(frozen=True, slots=True)
class Rate:
    """hits / n."""

    hits: int
    n: int

    @property
    def share(self) -> float:
        """hits / n (nan when n is 0)."""
        return self.hits / self.n if self.n else math.nan


@dataclass(frozen=True, slots=True)
class Delay:
    """Median and p90 of a set of delays (minutes), with how many there were."""

    median_min: float
    p90_min: float
    n: int


def bench_catalog(catalog: Catalog | None = None) -> Catalog:
    """The catalog the suite grades with: the bundled one, with a `sessions` KPI.

    Args:
        catalog: a base catalog (default: the bundled one).

    Returns:
        The catalog; a `sessions` sum KPI (direction "either") is added when it has none.
    """
    base = catalog or load_catalog()
    if any(k.name == "sessions" for k in base.kpis):
        return base
    orders = next(k for k in base.kpis if k.aggregation == "sum")
    sessions = dataclasses.replace(
        orders, name="sessions", stream="sessions", direction="either", critical=False
    )
    return dataclasses.replace(base, kpis=(*base.kpis, sessions))


def product_catalog(
    product: str, services: Iterable[str], catalog: Catalog | None = None
) -> Catalog:
    """`bench_catalog` with the shop's business KPIs (sessions, orders, revenue, conversion,
    cart value) measured at product level for `product`, whose members are `services`.

    Args:
        product: the product (value stream).
        services: its member services.
        catalog: a base catalog (default: the bundled one).
    """
    base = bench_catalog(catalog)
    business = {"sessions", "orders", "revenue", "conversion", "cart_value"}
    kpis = tuple(
        dataclasses.replace(k, level="product") if k.name in business else k for k in base.kpis
    )
    return dataclasses.replace(base, kpis=kpis).with_products({product: tuple(services)})


def judge_events(
    events: Iterable[Decoded], catalog: Catalog, limits: Limits | None = None
) -> list[VerdictRecord]:
    """Every verdict record one Pipeline emits for the events, exactly as `valueloop replay` runs.

    The Pipeline is built as stream_app.replay_cli builds it (catalog, the bundled value stream,
    the guard with ``limits``); stream_app.replay.replay sorts the events by event time (stable),
    feeds them with `handle_many` in batches and closes the input.

    Args:
        events: decoded events.
        catalog: the KPI catalog.
        limits: the guard's limits (default: Limits()).

    Returns:
        The records, in emission order.
    """
    pipeline = Pipeline(catalog, limits=limits or Limits())
    return replay(events, pipeline, ReplayOutcome()).verdicts


def score(truths: Sequence[Truth], records: Iterable[VerdictRecord]) -> list[Scored]:
    """Pair every truth with the final verdict (latest revision) and the first `degraded` record.

    Args:
        truths: oracle truth per (release, KPI).
        records: every record the pipeline emitted.

    Returns:
        One Scored per truth, in the same order.
    """
    finals: dict[tuple[str, str], VerdictRecord] = {}
    first: dict[tuple[str, str], float] = {}
    for rec in records:
        key = (rec.release_id, rec.kpi)
        if rec.phase == "final" and (key not in finals or rec.revision >= finals[key].revision):
            finals[key] = rec
        if rec.judgement.verdict == "degraded":
            delay = rec.post_window[1] - rec.release_time
            first[key] = min(first.get(key, math.inf), delay)
    out = []
    for t in truths:
        key = (t.release_id, t.kpi)
        final = finals.get(key)
        j = final.judgement if final is not None else None
        out.append(
            Scored(
                truth=t,
                verdict=j.verdict if j is not None else MISSING,
                reason=j.reason_code if j is not None else "",
                change=j.change if j is not None else None,
                first_degraded=first.get(key),
            )
        )
    return out


def _rate(pairs: Sequence[Scored], hit: Callable[[Scored], bool]) -> Rate:
    return Rate(sum(1 for p in pairs if hit(p)), len(pairs))


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return math.nan
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# name -> (population, hit): the Done-when figures of issue 13, from truth alone.
RATES: dict[str, tuple[Callable[[Truth], bool], Callable[[Scored], bool]]] = {
    "recall_visible_drops": (
        lambda t: t.visible_drop and not t.overlapping,
        lambda p: p.verdict == "degraded",
    ),
    "drops_passed": (
        lambda t: t.big_drop and not t.overlapping,
        lambda p: p.verdict in ("neutral", "improved"),
    ),
    "neutral_called": (
        lambda t: t.neutral and not t.overlapping,
        lambda p: p.verdict in CALLS,
    ),
    "boundable_neutral_said_neutral": (
        lambda t: t.boundable and not t.overlapping,
        lambda p: p.verdict == "neutral",
    ),
    "overlaps_confounded": (
        lambda t: t.overlapping,
        lambda p: p.verdict == "confounded",
    ),
    "surge_neutral_called": (
        lambda t: t.surge and t.neutral and not t.overlapping,
        lambda p: p.verdict in CALLS,
    ),
    "gap_neutral_called": (
        lambda t: t.gap and t.neutral and not t.overlapping,
        lambda p: p.verdict in CALLS,
    ),
    "nogap_neutral_called": (
        lambda t: not t.gap and t.neutral and not t.overlapping,
        lambda p: p.verdict in CALLS,
    ),
    "low_traffic_neutral_called": (
        lambda t: t.low_traffic and t.neutral and not t.overlapping,
        lambda p: p.verdict in CALLS,
    ),
    "missing_final": (lambda t: True, lambda p: p.verdict == MISSING),
}
TARGETS: dict[str, str] = {
    "recall_visible_drops": ">= 95 %",
    "drops_passed": "<= 2 %",
    "neutral_called": "<= 1 %",
    "boundable_neutral_said_neutral": ">= 80 %",
    "overlaps_confounded": "100 %",
    "surge_neutral_called": "0",
    "gap_neutral_called": "never by the gap",
    "nogap_neutral_called": "",
    "low_traffic_neutral_called": "<= 1 %",
    "missing_final": "0",
    "first_degraded": "median <= 30 min",
}


@dataclass(frozen=True, slots=True)
class Figures:
    """The suite's figures for one group of pairs (one KPI, or all of them)."""

    rates: dict[str, Rate]
    first_degraded: Delay
    gap_verdicts: dict[str, int]  # verdict mix of pairs with a gap in A
    pairs: int


def figures(pairs: Sequence[Scored]) -> Figures:
    """Compute the figures of one group of scored pairs.

    Args:
        pairs: scored pairs.

    Returns:
        Rates (hits, n) per RATES entry, the delay to the first `degraded` record on visible
        drops that got one (minutes: median, p90, n) and the verdict mix of pairs with a gap.
    """
    rates = {}
    for name, (population, hit) in RATES.items():
        rates[name] = _rate([p for p in pairs if population(p.truth)], hit)
    delays = [
        p.first_degraded / 60.0
        for p in pairs
        if p.truth.visible_drop and not p.truth.overlapping and p.first_degraded is not None
    ]
    delay = Delay(_quantile(delays, 0.5), _quantile(delays, 0.9), len(delays))
    gaps = Counter(p.verdict for p in pairs if p.truth.gap)
    return Figures(rates, delay, dict(sorted(gaps.items())), len(pairs))


def figures_by_kpi(pairs: Sequence[Scored]) -> dict[str, Figures]:
    """Figures per KPI and overall (key "all").

    Args:
        pairs: scored pairs.

    Returns:
        KPI -> figures, KPIs sorted, then "all".
    """
    kpis = sorted({p.truth.kpi for p in pairs})
    out = {k: figures([p for p in pairs if p.truth.kpi == k]) for k in kpis}
    out["all"] = figures(pairs)
    return out


def spec_names(catalog: Catalog) -> list[str]:
    """KPI names of a catalog (helper for callers that check truth covers the catalog)."""
    specs: tuple[KpiSpec, ...] = catalog.kpis
    return [k.name for k in specs]
