"""View models of the web view and the static report: the worker's state as plain JSON-ready dicts.

Pure: no faust, no clock. ``now`` is a parameter (the worker and the report pass the pipeline's
latest event time, so the same events give the same pages whatever the wall clock says). Every
function returns dicts, lists, strings, numbers, booleans and None only.
"""

from __future__ import annotations

import math
from typing import Any

from stream_app.core.catalog import product_key
from stream_app.core.dora import LEVEL_THRESHOLDS, DoraReport, dora_levels
from stream_app.core.flow import Distribution, FlowReport
from stream_app.core.impact import KpiWindows
from stream_app.core.ledger import BET_OUTCOMES, DeliveredValue, LedgerEntry
from stream_app.core.types import KpiJudgement, KpiSpec, VerdictRecord, WindowData
from stream_app.events.model import Release
from stream_app.pipeline import Pipeline

DAY = 86400.0
# Periods offered by the value stream map and DORA pages (days); the configured period is added.
PERIOD_DAYS: tuple[float, ...] = (1.0, 7.0, 30.0)
TREND_POINTS = 7  # DORA trend: the period cut into this many consecutive slices
# A release's overall verdict is the first of these that one of its KPIs has: a degraded KPI is
# what a reader must see first, then a real improvement, then why the rest could not tell.
PRECEDENCE: tuple[str, ...] = ("degraded", "improved", "confounded", "inconclusive", "neutral")

Json = dict[str, Any]


def periods(pipeline: Pipeline) -> list[float]:
    """The periods (seconds) the pages offer: the fixed ones and the configured one, ascending."""
    return sorted({d * DAY for d in PERIOD_DAYS} | {pipeline.report_period_seconds})


def _num(x: float | None) -> float | None:
    """A finite float, or None (JSON has no inf or NaN)."""
    return x if x is not None and math.isfinite(x) else None


def _dist(d: Distribution | None) -> Json | None:
    return None if d is None else {"count": d.count, "p50": d.p50, "p85": d.p85, "total": d.total}


def _page(pipeline: Pipeline, now: float | None) -> float | None:
    t = pipeline.max_event_time if now is None else now
    return t if math.isfinite(t) else None


# ------------------------------------------------------------------------------ value stream map


def flow_report(r: FlowReport) -> Json:
    """One value stream's map: stages in order with times, WIP and the bottleneck flagged."""
    neck = r.bottleneck
    return {
        "value_stream": r.value_stream,
        "period_start": r.period_start,
        "period_end": r.period_end,
        "finished": r.finished,
        "velocity_per_day": r.velocity_per_day,
        "open_items": r.open_items,
        "flow_time": _dist(r.flow_time),
        "flow_seconds": r.flow_seconds,
        "active_seconds": r.active_seconds,
        "wait_seconds": r.wait_seconds,
        "efficiency": _num(r.efficiency),
        "distribution": dict(sorted(r.distribution.items())),
        "stages": [
            {
                "stage": s.stage,
                "kind": s.kind,
                "in_flow": s.in_flow,
                "items": s.items,
                "active": _dist(s.active),
                "wait": _dist(s.wait),
                "active_seconds": s.active_seconds,
                "wait_seconds": s.wait_seconds,
                "wait_share": _num(s.wait_share),
                "wip": s.load,
                "bottleneck": neck is not None and neck.stage == s.stage,
            }
            for s in r.stages
        ],
        "bottleneck": None
        if neck is None
        else {
            "stage": neck.stage,
            "wait_share": neck.wait_share,
            "wait_seconds": neck.wait_seconds,
            "wait_p50": neck.wait.p50,
            "wait_p85": neck.wait.p85,
        },
    }


def flow_view(pipeline: Pipeline, now: float | None, period_seconds: float) -> Json:
    """Every value stream's map over ``(now - period, now]`` (default `now`: latest event time)."""
    t = _page(pipeline, now)
    streams: dict[str, Json] = {}
    if t is not None:
        streams = {
            vs: flow_report(r) for vs, r in pipeline.flow.snapshot(t, period_seconds).items()
        }
    return {
        "now": t,
        "period_seconds": period_seconds,
        "periods": periods(pipeline),
        "stages": list(pipeline.flow.defn.stage_names()),
        "value_streams": streams,
    }


# ------------------------------------------------------------------------------ releases


def judgement(j: KpiJudgement) -> Json:
    """A KPI judgement as the pages show it (relative changes as fractions)."""
    return {
        "verdict": j.verdict,
        "reason": j.reason,
        "reason_code": j.reason_code,
        "baseline_value": _num(j.baseline_value),
        "post_value": _num(j.post_value),
        "change": _num(j.change),
        "ci_low": _num(j.ci_low),
        "ci_high": _num(j.ci_high),
        "p_value": _num(j.p_value),
        "p_adjusted": _num(j.p_adjusted),
        "method": j.method,
        "confounders": list(j.confounders),
    }


def _release(r: Release, product: str | None = None) -> Json:
    return {
        "id": r.id,
        "service": r.service,
        "product": product if product is not None else r.service,
        "version": r.version,
        "time": r.time,
        "kind": r.kind,
        "environment": r.environment,
        "scope": dict(r.scope),
        "flag_key": r.flag_key,
    }


def overall(verdicts: list[str]) -> str | None:
    """A release's headline verdict from its KPIs' (see `PRECEDENCE`; None when none yet)."""
    ranked = [v for v in PRECEDENCE if v in verdicts]
    return ranked[0] if ranked else None


ReleaseState = tuple[Release, bool, dict[str, VerdictRecord], dict[str, str]]


def release_states(pipeline: Pipeline) -> list[ReleaseState]:
    """Every release held, oldest first, once: its service's and its product's states merged
    (finalized when both are; final and interim verdicts of both levels' KPIs)."""
    merged: dict[str, ReleaseState] = {}
    for rel, finalized, finals, interims in pipeline.engine.release_states():
        got = merged.get(rel.id)
        if got is None:
            merged[rel.id] = (rel, finalized, dict(finals), dict(interims))
        else:
            merged[rel.id] = (
                got[0],
                got[1] and finalized,
                {**got[2], **finals},
                {**got[3], **interims},
            )
    return sorted(merged.values(), key=lambda x: (x[0].time, x[0].id))


def kpis_of(pipeline: Pipeline, service: str) -> tuple[KpiSpec, ...]:
    """The KPIs a release of `service` is judged on: its own, then its product's."""
    cat = pipeline.catalog
    own = cat.for_service(service)
    if not cat.has_product_kpis():
        return own
    return own + cat.for_service(product_key(cat.product_of(service)))


def releases_view(pipeline: Pipeline, now: float | None = None, limit: int = 200) -> Json:
    """Recent releases per service (newest last), with each KPI's verdict, and the services of
    each product (value stream).

    A KPI shows its final verdict once there is one (latest revision), else its latest interim
    verdict (``phase`` says which). ``limit`` keeps the newest releases of each service.
    """
    t = _page(pipeline, now)
    services: dict[str, list[Json]] = {}
    products: dict[str, set[str]] = {}
    kpis: dict[str, None] = {}
    for rel, finalized, finals, interims in release_states(pipeline):
        if t is not None and rel.time > t:
            continue
        verdicts: dict[str, Json] = {}
        product = pipeline.catalog.product_of(rel.service)
        products.setdefault(product, set()).add(rel.service)
        for spec in kpis_of(pipeline, rel.service):
            kpis[spec.name] = None
            rec = finals.get(spec.name)
            if rec is not None:
                verdicts[spec.name] = {
                    **judgement(rec.judgement),
                    "phase": "final",
                    "revision": rec.revision,
                    "critical": rec.critical,
                }
            elif spec.name in interims:
                verdicts[spec.name] = {"verdict": interims[spec.name], "phase": "interim"}
        services.setdefault(rel.service, []).append(
            {
                **_release(rel, product),
                "finalized": finalized,
                "verdicts": verdicts,
                "overall": overall([v["verdict"] for v in verdicts.values()]),
                "bets": [
                    {"kpi": b.kpi, "expected": b.change if b.direction == "up" else -b.change}
                    for b in pipeline.release_bets(rel.id)
                ],
            }
        )
    return {
        "now": t,
        "kpis": list(kpis),
        "services": {s: rs[-limit:] for s, rs in sorted(services.items())},
        "products": {p: sorted(ss) for p, ss in sorted(products.items())},
    }


def _series(w: WindowData | None, shift: float = 0.0) -> Json | None:
    """A window's per-bucket values (None where a bucket has no data), moved by `shift` seconds."""
    if w is None:
        return None
    n = len(w.num)
    width = (w.end - w.start) / n if n else 0.0
    return {
        "start": w.start + shift,
        "end": w.end + shift,
        "bucket_seconds": width,
        "values": [_num(a / b) if b > 0 else None for a, b in zip(w.num, w.den, strict=True)],
        "value": _num(w.value),
        "samples": w.samples,
    }


def _kpi_chart(kw: KpiWindows, rec: VerdictRecord | None, interim: str | None) -> Json:
    spec = kw.spec
    shift = 0.0
    if kw.baseline_ref is not None:
        # Drawn under the release's own windows: the reference moved forward by its lag.
        shift = kw.baseline.start - kw.baseline_ref.start
    verdict: Json | None = None
    if rec is not None:
        verdict = {**judgement(rec.judgement), "phase": "final", "revision": rec.revision}
    elif interim is not None:
        verdict = {"verdict": interim, "phase": "interim"}
    return {
        "kpi": spec.name,
        "aggregation": spec.aggregation,
        "direction": spec.direction,
        "critical": spec.critical,
        "min_change": spec.min_change,
        "baseline": _series(kw.baseline),
        "post": _series(kw.post),
        "reference": None
        if kw.baseline_ref is None
        else {
            "label": kw.reference,
            "lag_seconds": shift,
            "baseline": _series(kw.baseline_ref, shift),
            "post": _series(kw.post_ref, shift),
        },
        "verdict": verdict,
        # What the verdict was judged on (final verdicts record it).
        "seasonal_reference": rec.seasonal_reference if rec is not None else None,
    }


def release_view(pipeline: Pipeline, release_id: str) -> Json | None:
    """One release with, per KPI, its baseline and post series, reference and verdict."""
    for rel, finalized, finals, interims in release_states(pipeline):
        if rel.id != release_id:
            continue
        charts = [
            _kpi_chart(kw, finals.get(kw.spec.name), interims.get(kw.spec.name))
            for kw in pipeline.engine.release_windows(release_id)
        ]
        product = pipeline.catalog.product_of(rel.service)
        return {**_release(rel, product), "finalized": finalized, "kpis": charts}
    return None


# ------------------------------------------------------------------------------ DORA


def _dora_point(r: DoraReport | None, end: float) -> Json:
    return {
        "end": end,
        "deployments": 0 if r is None else r.deployments,
        "per_day": 0.0 if r is None else r.deployment_frequency_per_day,
        "lead_time_p50": None if r is None or r.lead_time is None else r.lead_time.p50,
        "change_failure_rate": None if r is None else _num(r.change_failure_rate),
        "recovery_p50": None if r is None or r.recovery_time is None else r.recovery_time.p50,
        "rework_rate": None if r is None else _num(r.rework_rate),
        "levels": {"deployment_frequency": "low"} if r is None else dict(dora_levels(r)),
    }


def dora_view(pipeline: Pipeline, now: float | None, period_seconds: float) -> Json:
    """The five DORA metrics per service over the period with their performance levels, a trend,
    and the failures with causes.

    The trend cuts the period into `TREND_POINTS` consecutive slices, oldest first, each
    reported on its own (deployments per day, lead time p50, change failure rate, recovery p50,
    rework rate, and each metric's level).
    Failures with cause ``degraded-kpi`` came from impact verdicts (their KPIs are listed).
    """
    t = _page(pipeline, now)
    out: dict[str, Json] = {}
    if t is not None:
        step = period_seconds / TREND_POINTS
        # Slices first: a report prunes as of its `now`, and `t` is the latest of them.
        ends = [t - (TREND_POINTS - 1 - i) * step for i in range(TREND_POINTS)]
        slices = [pipeline.dora.report(e, step) for e in ends]
        for service, r in pipeline.dora.report(t, period_seconds).items():
            out[service] = {
                **dora_report(r),
                "trend": [
                    _dora_point(s.get(service), e) for s, e in zip(slices, ends, strict=True)
                ],
            }
    return {
        "now": t,
        "period_seconds": period_seconds,
        "periods": periods(pipeline),
        "trend_step_seconds": period_seconds / TREND_POINTS,
        "services": dict(sorted(out.items())),
        "level_thresholds": {k: list(v) for k, v in LEVEL_THRESHOLDS.items()},
        "rework_window_seconds": pipeline.dora.rework_window,
    }


def dora_report(r: DoraReport) -> Json:
    """One service's DORA report: the four keys and the failures with their causes."""
    return {
        "service": r.service,
        "deployments": r.deployments,
        "per_day": r.deployment_frequency_per_day,
        "lead_time": _dist(r.lead_time),
        "changes": r.changes,
        "change_failure_rate": _num(r.change_failure_rate),
        "rework_rate": _num(r.rework_rate),
        "rework_deployments": r.rework_deployments,
        "rollbacks": r.rollbacks,
        "levels": dict(dora_levels(r)),
        "failed_deployments": r.failed_deployments,
        "failures_by_cause": dict(r.failures_by_cause),
        "recovery_time": _dist(r.recovery_time),
        "unrecovered": r.unrecovered,
        "failures": [
            {
                "deployment_id": f.deployment_id,
                "version": f.version,
                "time": f.time,
                "causes": list(f.causes),
                "from_impact": "degraded-kpi" in f.causes,
                "degraded_kpis": list(f.degraded_kpis),
                "incident_ids": list(f.incident_ids),
                "rollback_ids": list(f.rollback_ids),
                "recovered_at": f.recovered_at,
                "recovery_seconds": f.recovery_seconds,
            }
            for f in r.failures
        ],
        "incidents": [
            {
                "incident_id": i.incident_id,
                "time": i.time,
                "deployment_id": i.deployment_id,
                "link": i.link,
                "resolved_at": i.resolved_at,
            }
            for i in r.incidents
        ],
    }


# ------------------------------------------------------------------------------ static report


def report_bundle(pipeline: Pipeline, now: float | None = None, title: str = "valueloop") -> Json:
    """Everything the static report shows, for every offered period, with every release's charts."""
    t = _page(pipeline, now)
    ps = periods(pipeline)
    rels = releases_view(pipeline, t)
    details = {
        r["id"]: release_view(pipeline, r["id"]) for rs in rels["services"].values() for r in rs
    }
    return {
        "title": title,
        "now": t,
        "default_period": pipeline.report_period_seconds,
        "flow": {str(int(p)): flow_view(pipeline, t, p) for p in ps},
        "dora": {str(int(p)): dora_view(pipeline, t, p) for p in ps},
        "releases": rels,
        "release": details,
        "value": {str(int(p)): value_view(pipeline, t, p) for p in ps},
    }


# ------------------------------------------------------------------------------ value


def _delivered(d: DeliveredValue | None) -> Json | None:
    if d is None:
        return None
    return {
        "kpi": d.kpi,
        "unit": d.unit,
        "level_per_day": _num(d.level_per_day),
        "per_day": _num(d.per_day),
        "per_day_low": _num(d.per_day_low),
        "per_day_high": _num(d.per_day_high),
        "expected_per_day": _num(d.expected_per_day),
    }


def bet_row(e: LedgerEntry) -> Json:
    """One ledger entry as the Value page shows it: each bet's expected vs delivered, the cost."""
    by_kpi = {k.kpi: k for k in e.kpis}
    value = e.value
    units = {d.kpi: d for d in value.delivered} if value is not None else {}
    return {
        "key": f"{e.release_id or ''}/{e.item_id or ''}",
        "kind": "item" if e.item_id is not None else "release",
        "release_id": e.release_id,
        "item_id": e.item_id,
        "service": e.service,
        "version": e.version,
        "time": e.time,
        "outcome": e.outcome,
        "degraded": e.degraded,
        "expectations": [
            {
                "kpi": x.kpi,
                "direction": x.direction,
                "expected": x.change if x.direction == "up" else -x.change,
                "outcome": o,
                "verdict": by_kpi[x.kpi].verdict if x.kpi in by_kpi else None,
                "change": _num(by_kpi[x.kpi].change) if x.kpi in by_kpi else None,
                "ci_low": _num(by_kpi[x.kpi].ci_low) if x.kpi in by_kpi else None,
                "ci_high": _num(by_kpi[x.kpi].ci_high) if x.kpi in by_kpi else None,
                "value": _delivered(units.get(x.kpi)),
            }
            for x, o in e.expectations
        ],
        "active_hours": None if value is None else value.active_hours,
        "total_hours": None if value is None else value.total_hours,
        "cost": None if value is None else _num(value.cost),
        "items": e.cost.items,
        "headline": None if value is None else _delivered(value.headline),
        "value_per_hour": None if value is None else _num(value.value_per_hour),
        "summary": e.summary,
    }


def rank_bets(rows: list[Json]) -> list[Json]:
    """Bets best first: value per engineering hour, then value a day; unvalued (pending,
    no business unit) after, newest first. Adds ``rank`` (1 = best)."""

    def key(r: Json) -> tuple[int, float, float, float]:
        vph, head = r["value_per_hour"], r["headline"]
        per_day = head["per_day"] if head and head["per_day"] is not None else None
        if vph is not None:
            return (0, -vph, -(per_day or 0.0), -(r["time"] or 0.0))
        if per_day is not None:
            return (1, -per_day, 0.0, -(r["time"] or 0.0))
        return (2, 0.0, 0.0, -(r["time"] or 0.0))

    ranked = sorted(rows, key=key)
    return [{**r, "rank": i + 1} for i, r in enumerate(ranked)]


def portfolio(rows: list[Json]) -> Json:
    """Per service: how many bets, the share met / not met / went the other way, value delivered
    a day per unit, active hours and cost."""
    out: dict[str, Json] = {}
    for r in rows:
        p = out.setdefault(
            r["service"],
            {
                "bets": 0,
                "outcomes": dict.fromkeys(BET_OUTCOMES, 0),
                "value_per_day": {},
                "active_hours": 0.0,
                "cost": None,
            },
        )
        p["bets"] += 1
        if r["outcome"] in p["outcomes"]:
            p["outcomes"][r["outcome"]] += 1
        if r["kind"] == "release":  # an item's work is in its release's already
            p["active_hours"] += r["active_hours"] or 0.0
            if r["cost"] is not None:
                p["cost"] = (p["cost"] or 0.0) + r["cost"]
            h = r["headline"]
            if h is not None and h["per_day"] is not None:
                p["value_per_day"][h["unit"]] = (
                    p["value_per_day"].get(h["unit"], 0.0) + h["per_day"]
                )
    for p in out.values():
        judged = sum(n for o, n in p["outcomes"].items() if o not in ("pending", "inconclusive"))
        p["judged"] = judged
        for o in ("met", "not-met", "went-the-other-way"):
            p["share_" + o.replace("-", "_")] = p["outcomes"][o] / judged if judged else None
    return dict(sorted(out.items()))


def value_view(pipeline: Pipeline, now: float | None, period_seconds: float) -> Json:
    """The Value page: every bet of the period ranked, the portfolio per service, and work in
    progress with its bet and cost so far (default `now`: latest event time)."""
    t = _page(pipeline, now)
    bets: list[Json] = []
    wip: list[Json] = []
    if t is not None:
        latest: dict[str, Json] = {}
        for e in pipeline.ledger_report(t, period_seconds):
            if e.expectations:
                row = bet_row(e)
                latest[row["key"]] = row
        bets = rank_bets(list(latest.values()))
        rate = pipeline.cost_per_hour
        for vs, item, stage, expected, cost in pipeline.bets_in_progress(t):
            active = cost.active_seconds / 3600.0
            wip.append(
                {
                    "value_stream": vs,
                    "item_id": item,
                    "stage": stage,
                    "expectations": [
                        {
                            "kpi": x.kpi,
                            "direction": x.direction,
                            "expected": x.change if x.direction == "up" else -x.change,
                        }
                        for x in expected
                    ],
                    "active_hours": active,
                    "total_hours": (cost.active_seconds + cost.wait_seconds) / 3600.0,
                    "cost": None if rate is None else active * rate,
                }
            )
    return {
        "now": t,
        "period_seconds": period_seconds,
        "periods": periods(pipeline),
        "cost_per_hour": pipeline.cost_per_hour,
        "currency": pipeline.currency,
        "bets": bets,
        "portfolio": portfolio(bets),
        "wip": wip,
    }
