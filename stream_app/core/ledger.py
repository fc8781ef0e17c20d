"""Value ledger: what a release or feature cost in work, and what it did to the business KPIs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stream_app.core.dora import DoraTracker, KpiOutcome
from stream_app.core.flow import FlowTracker, WorkCost

BetOutcome = Literal[
    "met", "partly-met", "not-met", "went-the-other-way", "inconclusive", "pending"
]


@dataclass(frozen=True, slots=True)
class ExpectedBenefit:
    """What the team declared a change would do: e.g. raise ``conversion`` by 0.03 (3 %)."""

    kpi: str
    direction: Literal["up", "down"]
    change: float  # expected relative size, positive (0.03 = 3 %)


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
) -> LedgerEntry | None:
    """The ledger entry of a release: its items' work and its final KPI verdicts.

    Args:
        release_id: the release (its event id).
        flow: the flow tracker, for the cost of the items the release took to production.
        dora: the DORA tracker, for the release and its final verdicts.
        expected: benefits declared for the release (from the features file or its events).

    Returns:
        The entry, or None when neither tracker knows the release.
    """
    info = dora.release_info(release_id)
    if info is None:
        return None
    cost = flow.release_cost(release_id)
    verdicts = dora.final_verdicts(release_id)
    return _entry(release_id, info.service, info.version, info.time, None, cost, verdicts, expected)


def item_entry(
    value_stream: str,
    item_id: str,
    flow: FlowTracker,
    dora: DoraTracker,
    expected: tuple[ExpectedBenefit, ...] = (),
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
    )
