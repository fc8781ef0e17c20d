"""The project's own simulator (stream_app.simulate) graded by the same oracle as the shop."""

from __future__ import annotations

import math

import numpy as np

from stream_app.events.model import Incident, KpiSample, Release, WorkflowEvent
from stream_app.sim.truth import LOW_ORDERS, MAX_HORIZON, OVERLAP_SECONDS, Direction, Truth
from stream_app.simulate import (
    KPI_DIRECTION,
    Scenario,
    _base_rates,
    _expected,
    _log_var,
    accuracy_scenario,
    generate,
    releases,
)

KPIS: dict[str, Direction] = {**KPI_DIRECTION, "sessions": "either"}


def sim_scenario(seed: int, n_releases: int = 200) -> Scenario:
    """The accuracy scenario of stream_app.simulate for ``seed``."""
    return accuracy_scenario(seed=seed, n_releases=n_releases)


def sim_events(scenario: Scenario) -> list[Release | KpiSample | WorkflowEvent | Incident]:
    """Every event of the scenario (stream_app.simulate.generate)."""
    return list(generate(scenario))


def sim_truth(scenario: Scenario) -> list[Truth]:
    """Oracle truth for every (release, KPI) of a stream_app.simulate scenario.

    Same definition as the shop's: effect over the alone window A = [t, min(next release of the
    service, t + MAX_HORIZON)) with and without the release (simulate's rate model, so regional
    releases are diluted by their region's share of A); the standard error is simulate's own
    sampling variance of the post window alone (``_log_var`` of ``_expected`` over A: Poisson
    and binomial counts plus its per-sample lognormal traffic noise, no reference). For
    `sessions`, which simulate's truth lacks: 1/S + noise^2 * sum(lam^2) / S^2 from the base
    rates (without release effects on sessions, which move it by at most 10 %). The simulator
    has no outages and no Monday surge in this scenario: ``gap`` and ``surge`` are False.

    Args:
        scenario: a stream_app.simulate scenario.

    Returns:
        One Truth per (release, KPI of KPIS), in the scenario's release order.
    """
    rels = releases(scenario)
    svc_index = {s.name: i for i, s in enumerate(scenario.services)}
    noise2 = scenario.traffic_noise**2
    out: list[Truth] = []
    for idx, (plan, rel) in enumerate(zip(scenario.releases, rels, strict=True)):
        s = svc_index[plan.service]
        svc = scenario.services[s]
        t = plan.time
        later = sorted(
            p.time for p in scenario.releases if p.service == plan.service and p.time > t
        )
        alone_end = min([t + MAX_HORIZON, *later[:1]])
        active = [p for p in scenario.releases if p.service == plan.service and p.time < alone_end]
        others = [p for p in active if p is not plan]
        post = _expected(scenario, s, t, alone_end, active)
        without = _expected(scenario, s, t, alone_end, others)
        overlaps = tuple(
            rels[j].id
            for j, p in enumerate(scenario.releases)
            if j != idx and p.service == plan.service and abs(p.time - t) < OVERLAP_SECONDS
        )
        first_hour = min(alone_end, t + 3600.0)
        first = _expected(scenario, s, t, first_hour, active, latency=False)
        low = first.orders / ((first_hour - t) / 60.0) < LOW_ORDERS
        times = np.arange(t, alone_end, 60.0, dtype=np.float64)
        lam = _base_rates(scenario, times)[0][s] / scenario.samples_per_minute
        var_sessions = (
            1.0 / post.sessions
            + noise2
            * float((lam**2).sum() * scenario.samples_per_minute)
            / (float(lam.sum()) * scenario.samples_per_minute) ** 2
        )
        for kpi, direction in KPIS.items():
            if kpi == "sessions":
                effect = post.sessions / without.sessions - 1.0
                var = var_sessions
            else:
                sigma = svc.latency_sigma if kpi == "latency_p95" else svc.cart_value_sigma
                effect = post.kpi(kpi) / without.kpi(kpi) - 1.0
                var = _log_var(post, kpi, sigma)[1]
            out.append(
                Truth(
                    world="sim",
                    seed=scenario.seed,
                    release_id=rel.id,
                    service=plan.service,
                    time=t,
                    kpi=kpi,
                    direction=direction,
                    effect=0.0 if abs(effect) < 1e-9 else float(effect),
                    alone_end=alone_end,
                    se=math.sqrt(var),
                    overlaps=overlaps,
                    low_traffic=low,
                )
            )
    return out
