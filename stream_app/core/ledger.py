"""Value ledger: what a release or feature cost in work, and what it did to the business KPIs."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from stream_app.core.dora import DoraTracker, KpiOutcome
from stream_app.core.flow import FlowTracker, WorkCost
from stream_app.errors import ConfigError
from stream_app.events.model import Expectation

BetOutcome = Literal[
    "met", "partly-met", "not-met", "went-the-other-way", "inconclusive", "pending"
]
BET_OUTCOMES: tuple[str, ...] = (
    "met",
    "partly-met",
    "not-met",
    "went-the-other-way",
    "inconclusive",
    "pending",
)
# The metric label of a ledger entry that declared no expected benefit.
UNDECLARED = "undeclared"
DAY = 86400.0


def daily_level(
    aggregation: str, baseline_value: float | None, den_per_bucket: float, bucket_seconds: float
) -> float | None:
    """A KPI's baseline level in business units a day: what its relative change multiplies.

    - sum (orders, revenue): the baseline's sum per bucket, times buckets a day: orders a day,
      currency a day.
    - ratio (conversion = orders / sessions): the baseline ratio times the denominator a day
      (sessions a day): the numerator a day (orders a day). A relative change of the ratio, at
      the same traffic, moves the numerator by the same share.
    - mean (cart value): the baseline mean times observations a day: the total a day.
    - quantile (latency): no business unit (None).

    Args:
        aggregation: the KPI's aggregation.
        baseline_value: the judge's baseline level (per bucket for sum; the ratio; the mean).
        den_per_bucket: the baseline's denominator per bucket that holds data (sum: 1; ratio:
            the denominator stream's sum; mean: observations).
        bucket_seconds: the KPI's bucket width.

    Returns:
        Units a day, or None when the KPI has no business unit or no baseline.
    """
    if aggregation not in ("sum", "ratio", "mean") or baseline_value is None:
        return None
    if not bucket_seconds > 0 or not den_per_bucket >= 0:
        return None
    return baseline_value * den_per_bucket * (DAY / bucket_seconds)


def kpi_unit(aggregation: str, stream: str | None, numerator: str | None) -> str | None:
    """The business unit of a KPI's daily level: its stream (sum, mean) or numerator (ratio)."""
    if aggregation == "ratio":
        return numerator
    if aggregation in ("sum", "mean"):
        return stream
    return None


@dataclass(frozen=True, slots=True)
class DeliveredValue:
    """A KPI's delivered change in business units a day: baseline level x relative change.

    Attributes:
        kpi: the KPI.
        unit: the unit of the level (orders, revenue, ...), per day.
        level_per_day: the baseline level, units a day.
        change: the relative change (0.05 = +5 %).
        per_day: delivered units a day (level x change; negative: lost).
        per_day_low: the interval's low end (level x ci_low), None without an interval.
        per_day_high: the interval's high end.
        expected_per_day: the declared expectation in units a day (signed), None when undeclared.
    """

    kpi: str
    unit: str
    level_per_day: float
    change: float
    per_day: float
    per_day_low: float | None
    per_day_high: float | None
    expected_per_day: float | None = None


def delivered_value(
    kpi: KpiOutcome, expected: ExpectedBenefit | None = None
) -> DeliveredValue | None:
    """The delivered value of a KPI's final verdict, in business units a day.

    Returns:
        None when the verdict has no change or the KPI has no business unit.
    """
    if kpi.change is None or kpi.daily_level is None or kpi.unit is None:
        return None
    level = kpi.daily_level
    exp = None
    if expected is not None:
        exp = level * expected.change * (1.0 if expected.direction == "up" else -1.0)
    return DeliveredValue(
        kpi=kpi.kpi,
        unit=kpi.unit,
        level_per_day=level,
        change=kpi.change,
        per_day=level * kpi.change,
        per_day_low=None if kpi.ci_low is None else level * kpi.ci_low,
        per_day_high=None if kpi.ci_high is None else level * kpi.ci_high,
        expected_per_day=exp,
    )


@dataclass(frozen=True, slots=True)
class EntryValue:
    """What an entry cost and delivered, in hours, money and business units.

    Attributes:
        active_hours: active (worked-on) engineering time of its items.
        total_hours: total time its items spent in the flow (active + waiting).
        cost: active hours x the configured cost rate; None without a rate.
        delivered: per KPI with a business unit, the delivered value a day.
        headline: the value the entry is ranked by: the first declared KPI's, else the first
            KPI's that moved (improved or degraded); None when none has a business unit.
        value_per_hour: headline units a day per active engineering hour, signed so that a move
            in the declared direction is positive (None without work).
    """

    active_hours: float
    total_hours: float
    cost: float | None
    delivered: tuple[DeliveredValue, ...]
    headline: DeliveredValue | None
    value_per_hour: float | None


def value_of(
    cost: WorkCost,
    kpis: tuple[KpiOutcome, ...],
    expected: tuple[ExpectedBenefit, ...],
    cost_per_hour: float | None = None,
) -> EntryValue:
    """Cost and delivered value of a ledger entry (pure arithmetic; see `EntryValue`).

    Args:
        cost: the work its items took.
        kpis: its final verdicts.
        expected: its declared benefits.
        cost_per_hour: money per active engineering hour, when configured.
    """
    exp_by_kpi = {e.kpi: e for e in expected}
    delivered = tuple(
        d for k in kpis if (d := delivered_value(k, exp_by_kpi.get(k.kpi))) is not None
    )
    by_kpi = {d.kpi: d for d in delivered}
    headline = next((by_kpi[e.kpi] for e in expected if e.kpi in by_kpi), None)
    if headline is None and not expected:
        moved = {k.kpi for k in kpis if k.verdict in ("improved", "degraded")}
        headline = next((d for d in delivered if d.kpi in moved), None)
    active = cost.active_seconds / 3600.0
    total = (cost.active_seconds + cost.wait_seconds) / 3600.0
    # Value is a move in the bet's direction: fewer errors a day is a gain for a "down" bet.
    sign = -1.0 if headline is not None and _down(headline.kpi, expected) else 1.0
    return EntryValue(
        active_hours=active,
        total_hours=total,
        cost=None if cost_per_hour is None else active * cost_per_hour,
        delivered=delivered,
        headline=headline,
        value_per_hour=None
        if headline is None or active <= 0
        else sign * headline.per_day / active,
    )


def _down(kpi: str, expected: tuple[ExpectedBenefit, ...]) -> bool:
    return any(e.kpi == kpi and e.direction == "down" for e in expected)


# What the team declared a change would do: e.g. raise ``conversion`` by 0.03 (3 %). One type
# whichever way it was declared (event, work item, command line, features file).
ExpectedBenefit = Expectation


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """Cost and delivered value of one release (or of one work item, via its release)."""

    release_id: str | None
    service: str
    version: str
    time: float | None
    item_id: str | None  # set for a work-item entry
    cost: WorkCost
    kpis: tuple[KpiOutcome, ...]  # the release's final verdicts
    expectations: tuple[tuple[ExpectedBenefit, BetOutcome], ...]
    outcome: BetOutcome | None  # over all expectations; None when none was declared
    degraded: bool  # some KPI's final verdict is degraded
    summary: str
    value: EntryValue | None = None  # cost and delivered value in hours, money, units a day


def judge_expectation(expected: ExpectedBenefit, kpi: KpiOutcome | None) -> BetOutcome:
    """Whether a KPI's final verdict met a declared expectation.

    The verdict decides whether the KPI moved at all (neutral: it did not, so the bet was not
    met); the signed change decides how far and which way.

    Args:
        expected: the declared benefit.
        kpi: the KPI's final verdict for the release, or None when there is none yet.

    Returns:
        met, partly-met, not-met, went-the-other-way, inconclusive (no usable verdict) or pending.
    """
    if kpi is None:
        return "pending"
    if kpi.verdict in ("inconclusive", "confounded") or kpi.change is None:
        return "inconclusive"
    if kpi.verdict == "neutral":
        return "not-met"
    moved = kpi.change if expected.direction == "up" else -kpi.change
    if moved <= 0:
        return "went-the-other-way"
    # A tiny tolerance so a change that rounds to the declared size counts as met.
    return "met" if moved >= expected.change - 1e-12 else "partly-met"


def combine(outcomes: tuple[BetOutcome, ...]) -> BetOutcome | None:
    """One outcome for several expectations: any wrong-way move dominates, then pending, etc."""
    if not outcomes:
        return None
    if "went-the-other-way" in outcomes:
        return "went-the-other-way"
    if "pending" in outcomes:
        return "pending"
    if "inconclusive" in outcomes:
        return "inconclusive"
    if all(o == "met" for o in outcomes):
        return "met"
    if any(o in ("met", "partly-met") for o in outcomes):
        return "partly-met"
    return "not-met"


def release_entry(
    release_id: str,
    flow: FlowTracker,
    dora: DoraTracker,
    expected: tuple[ExpectedBenefit, ...] = (),
    cost_per_hour: float | None = None,
) -> LedgerEntry | None:
    """The ledger entry of a release: its items' work and its final KPI verdicts.

    Args:
        release_id: the release (its event id).
        flow: the flow tracker, for the cost of the items the release took to production.
        dora: the DORA tracker, for the release and its final verdicts.
        expected: benefits declared for the release (from the features file or its events).
        cost_per_hour: money per active engineering hour, when configured.

    Returns:
        The entry, or None when neither tracker knows the release.
    """
    info = dora.release_info(release_id)
    if info is None:
        return None
    cost = flow.release_cost(release_id)
    verdicts = dora.final_verdicts(release_id)
    return _entry(
        release_id,
        info.service,
        info.version,
        info.time,
        None,
        cost,
        verdicts,
        expected,
        cost_per_hour,
    )


def item_entry(
    value_stream: str,
    item_id: str,
    flow: FlowTracker,
    dora: DoraTracker,
    expected: tuple[ExpectedBenefit, ...] = (),
    cost_per_hour: float | None = None,
) -> LedgerEntry | None:
    """The ledger entry of one work item (a feature): its own work and its release's verdicts.

    Returns:
        The entry, or None when the flow tracker does not know the item.
    """
    cost = flow.item_cost(value_stream, item_id)
    if cost is None:
        return None
    rid = flow.item_release(value_stream, item_id)
    info = dora.release_info(rid) if rid is not None else None
    return _entry(
        rid,
        info.service if info else value_stream,
        info.version if info else "",
        info.time if info else None,
        item_id,
        cost,
        dora.final_verdicts(rid) if rid is not None else (),
        expected,
        cost_per_hour,
    )


def _entry(
    release_id: str | None,
    service: str,
    version: str,
    time: float | None,
    item_id: str | None,
    cost: WorkCost,
    kpis: tuple[KpiOutcome, ...],
    expected: tuple[ExpectedBenefit, ...],
    cost_per_hour: float | None = None,
) -> LedgerEntry:
    by_kpi = {k.kpi: k for k in kpis}
    judged = tuple((e, judge_expectation(e, by_kpi.get(e.kpi))) for e in expected)
    outcome = combine(tuple(o for _, o in judged))
    subject = f"item {item_id}" if item_id else f"release {version or release_id} of {service}"
    text = (
        f"{subject} cost {cost.active_seconds / 3600:.1f} h of active work"
        f" ({cost.items} item{'s' if cost.items != 1 else ''},"
        f" flow time {cost.flow_seconds / 3600:.1f} h)"
    )
    moves = [
        f"{k.kpi} by {k.change * 100:+.1f} % ({k.verdict})"
        if k.change is not None
        else f"{k.kpi}: {k.verdict}"
        for k in kpis
    ]
    text += f" and moved {', '.join(moves)}" if moves else "; no final KPI verdict yet"
    for e, o in judged:
        sign = "+" if e.direction == "up" else "-"
        text += f"; expected {e.kpi} {sign}{e.change * 100:.1f} %: {o.replace('-', ' ')}"
    value = value_of(cost, kpis, expected, cost_per_hour)
    if value.headline is not None:
        h = value.headline
        text += f"; delivered {h.per_day:+,.1f} {h.unit}/day"
        if value.value_per_hour is not None:
            text += f" ({value.value_per_hour:+,.2f} {h.unit}/day per engineering hour)"
    return LedgerEntry(
        release_id=release_id,
        service=service,
        version=version,
        time=time,
        item_id=item_id,
        cost=cost,
        kpis=kpis,
        expectations=judged,
        outcome=outcome,
        degraded=any(k.verdict == "degraded" for k in kpis),
        summary=text,
        value=value,
    )


# ---- declared benefits: the features file


@dataclass(frozen=True, slots=True)
class FeatureBet:
    """One feature of the features file: what it is expected to do, and which releases carry it.

    A release carries the feature when it is of ``service`` (if given) and its version is
    ``version``, or its flag is ``flag``, or it ships work item / change ``item``.
    """

    name: str
    expected: tuple[ExpectedBenefit, ...]
    service: str | None = None
    version: str | None = None
    flag: str | None = None
    item: str | None = None

    def carried_by(
        self, service: str, version: str, flag_key: str | None, shipped: tuple[str, ...]
    ) -> bool:
        """Whether a release (of ``service``, ``version``, shipping ``shipped``) carries it."""
        if self.service is not None and self.service != service:
            return False
        return (
            (self.version is not None and self.version == version)
            or (self.flag is not None and self.flag == flag_key)
            or (self.item is not None and self.item in shipped)
        )


@dataclass(frozen=True, slots=True)
class Features:
    """The parsed features file (empty when none is configured)."""

    bets: tuple[FeatureBet, ...] = ()
    source: str = "<none>"

    def expected_for(
        self, service: str, version: str, flag_key: str | None, shipped: tuple[str, ...]
    ) -> tuple[ExpectedBenefit, ...]:
        """The benefits expected of a release: those of every feature it carries, once each."""
        out: dict[ExpectedBenefit, None] = {}
        for bet in self.bets:
            if bet.carried_by(service, version, flag_key, shipped):
                out.update(dict.fromkeys(bet.expected))
        return tuple(out)

    def item_bets(self, shipped: tuple[str, ...]) -> tuple[FeatureBet, ...]:
        """The features declared on a work item that is among ``shipped``."""
        return tuple(b for b in self.bets if b.item is not None and b.item in shipped)


def parse_features(text: str, source: str = "<string>") -> Features:
    """Parse a features file: ``[[feature]]`` tables declaring expected KPI moves.

    Each feature has a ``name``, optionally a ``service``, at least one of ``version``, ``flag``
    and ``item`` (which releases carry it), and either ``kpi``/``direction``/``change`` or a list
    of ``[[feature.expect]]`` tables with those keys. ``direction`` is "up" or "down"; ``change``
    is the expected relative size, a number (0.03) or a percentage string ("3%").

    Args:
        text: the TOML document.
        source: where it came from, named in error messages.

    Returns:
        The features.

    Raises:
        ConfigError: the text is not TOML or a feature is incomplete or misspelt.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    unknown = sorted(set(doc) - {"feature"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; expected [[feature]]")
    raw = doc.get("feature", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: feature: expected [[feature]] tables")
    return Features(tuple(_feature(source, i, t) for i, t in enumerate(raw)), source)


def load_features(path: Path | str | None) -> Features:
    """Load a features file, or no features when ``path`` is None.

    Raises:
        ConfigError: the file cannot be read or is invalid.
    """
    if path is None:
        return Features()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read features file: {e}") from e
    return parse_features(text, str(p))


_FEATURE_KEYS = {"name", "service", "version", "flag", "item", "kpi", "direction", "change"}
_EXPECT_KEYS = {"kpi", "direction", "change"}


def _feature(source: str, i: int, t: Any) -> FeatureBet:
    where = f"{source}: [[feature]] #{i + 1}"
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(t) - _FEATURE_KEYS - {"expect"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_FEATURE_KEYS)}")
    name = _text(where, "name", t.get("name"))
    where = f"{source}: feature {name!r}"
    opt = {
        k: _text(where, k, t[k]) if k in t else None for k in ("service", "version", "flag", "item")
    }
    if opt["version"] is None and opt["flag"] is None and opt["item"] is None:
        raise ConfigError(f"{where}: says which releases carry it with version, flag or item")
    expects: list[dict[str, Any]] = []
    if set(t) & _EXPECT_KEYS:
        expects.append({k: t[k] for k in _EXPECT_KEYS if k in t})
    more = t.get("expect", [])
    if not isinstance(more, list) or not all(isinstance(x, dict) for x in more):
        raise ConfigError(f"{where}: expect: expected [[feature.expect]] tables")
    expects.extend(more)
    if not expects:
        raise ConfigError(f"{where}: declares no expected benefit (kpi, direction, change)")
    return FeatureBet(
        name=name,
        expected=tuple(_expect(where, e) for e in expects),
        service=opt["service"],
        version=opt["version"],
        flag=opt["flag"],
        item=opt["item"],
    )


def _expect(where: str, e: dict[str, Any]) -> ExpectedBenefit:
    unknown = sorted(set(e) - _EXPECT_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_EXPECT_KEYS)}")
    kpi = _text(where, "kpi", e.get("kpi"))
    direction = _text(where, "direction", e.get("direction"))
    if direction not in ("up", "down"):
        raise ConfigError(f"{where}: direction {direction!r} is not up or down")
    change = _change(where, e.get("change"))
    return ExpectedBenefit(kpi, cast(Literal["up", "down"], direction), change)


def _text(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: {key}: expected a non-empty string, got {v!r}")
    return v.strip()


def _change(where: str, v: Any) -> float:
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            x = float(v.strip()[:-1]) / 100.0
        except ValueError:
            raise ConfigError(f"{where}: change: {v!r} is not a percentage") from None
    elif isinstance(v, int | float) and not isinstance(v, bool):
        x = float(v)
    else:
        raise ConfigError(f"{where}: change: expected a number (0.03) or a percentage, got {v!r}")
    # The direction says which way; the size is positive so "down 5 %" is not written twice.
    if not x > 0:
        raise ConfigError(f"{where}: change: expected a positive size, got {v!r}")
    return x


def ledger_metric_samples(
    entries: tuple[LedgerEntry, ...],
) -> list[tuple[str, dict[str, str], float]]:
    """The Prometheus samples of release ledger entries, as (metric name, labels, value).

    Per service and bet outcome ("undeclared" when no benefit was declared): how many releases,
    how much active engineering time they cost, and the value a day their headline KPI delivered
    (per business unit). Every outcome of a service gets a value, so
    a release moving from pending to met moves the series instead of leaving a stale one.

    Args:
        entries: release entries (item entries are left out: their work is in their release's).

    Returns:
        The samples, in a stable order.
    """
    count: dict[tuple[str, str], float] = {}
    cost: dict[tuple[str, str], float] = {}
    value: dict[tuple[str, str, str], float] = {}
    units: dict[str, set[str]] = {}
    for e in entries:
        if e.item_id is not None:
            continue
        key = (e.service, e.outcome or UNDECLARED)
        count[key] = count.get(key, 0.0) + 1.0
        cost[key] = cost.get(key, 0.0) + e.cost.active_seconds
        h = e.value.headline if e.value is not None else None
        if h is not None and math.isfinite(h.per_day):
            units.setdefault(e.service, set()).add(h.unit)
            vkey = (*key, h.unit)
            value[vkey] = value.get(vkey, 0.0) + h.per_day
    out: list[tuple[str, dict[str, str], float]] = []
    for service in sorted({s for s, _ in count}):
        for outcome in (*BET_OUTCOMES, UNDECLARED):
            labels = {"service": service, "outcome": outcome}
            out.append(("valueloop_ledger_releases", labels, count.get((service, outcome), 0.0)))
            out.append(("valueloop_ledger_cost_seconds", labels, cost.get((service, outcome), 0.0)))
            # Units are the catalog's KPI streams: a bounded set.
            for unit in sorted(units.get(service, ())):
                out.append(
                    (
                        "valueloop_ledger_delivered_per_day",
                        {**labels, "unit": unit},
                        value.get((service, outcome, unit), 0.0),
                    )
                )
    return out
