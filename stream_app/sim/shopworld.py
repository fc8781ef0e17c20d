"""An independent simulated shop (seed in, events and oracle truth out), not the judge's own world.

Structurally different from stream_app.simulate: one region, smooth harmonic diurnal shape,
weekday levels that step at midnight (the biggest step Sunday -> Monday), a Monday-morning surge
of traffic that converts worse, gamma over-dispersion of every per-minute rate, gamma order values,
telemetry outages (minutes without any sample of a service) and releases every 3-7 hours per
service whose effects persist until a later release reverts them.

Per minute and service the generator draws
    sessions  S ~ Poisson(lam * U),          U ~ Gamma(mean 1, cv SESSION_CV)
    orders    O ~ Binomial(S, p * V),        V ~ Gamma(mean 1, cv CONVERSION_CV)
    revenue   R ~ Gamma(shape k * O, scale value / k)        (sum of O gamma order values)
    requests  Q ~ Poisson(S * rps)
    errors    E ~ Binomial(Q, r * W),        W ~ Gamma(mean 1, cv ERROR_CV)
    latency   N ~ Poisson(L) single observations, lognormal(mu + eta, sigma), eta ~ N(0, LAT_TAU)
and the oracle (`truth`) computes the variance of each KPI's log over a window from those same
formulas and the true expected rates, never from the drawn data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from stream_app.events.model import KpiSample, Release
from stream_app.sim.truth import LOW_ORDERS, MAX_HORIZON, OVERLAP_SECONDS, Direction, Truth

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

DAY = 86400.0
SHOP_START = 1717632000.0  # Thursday 2024-06-06 00:00 UTC
SEEDS = (1, 2, 3)  # the suite's fixed seeds: 3 worlds of DAYS days, ~940 releases
DAYS = 21
SESSION_CV = 0.03
CONVERSION_CV = 0.05  # per-minute over-dispersion of conversion beyond the binomial
ERROR_CV = 0.10
LAT_TAU = 0.03  # per-minute shift of log latency
LAT_SIGMA = 0.5
P95 = 0.95
# Weekday traffic level, Monday first: constant per UTC day, so traffic steps at midnight.
WEEKDAY_LEVEL = (1.1, 1.0, 1.0, 1.0, 0.95, 0.8, 0.7)
SURGE_TRAFFIC = 0.5  # Monday-morning surge: traffic x (1 + 0.5 bump) ...
SURGE_CONVERSION = -0.2  # ... converting x (1 - 0.2 bump)
SURGE_HOURS = (6.0, 8.0, 10.0, 12.0)  # bump rises 06-08 UTC, holds, gone at 12
KPIS: dict[str, Direction] = {
    "orders": "up",
    "revenue": "up",
    "conversion": "up",
    "cart_value": "up",
    "latency_p95": "down",
    "error_rate": "down",
    "sessions": "either",
}
LEVER_OF_KPI = {
    "orders": "conversion",
    "revenue": "conversion",
    "conversion": "conversion",
    "latency_p95": "latency",
    "error_rate": "error_rate",
}
LEVERS = ("conversion", "latency", "error_rate")
_NO_LABELS: dict[str, str] = {}  # shared by every sample: consumers treat events as immutable


@dataclass(frozen=True, slots=True)
class ShopService:
    """One service of the shop (rates at the daily peak of an average weekday)."""

    name: str
    peak_sessions: float
    conversion: float
    order_value: float
    order_value_shape: float  # gamma shape of one order's value (cv = 1/sqrt(shape))
    requests_per_session: float
    error_rate: float
    latency_ms: float
    latency_per_minute: float  # latency observations a minute at peak


# The product world: the shop's business KPIs (sessions, orders, revenue, conversion) at product
# level; its member services carry only their own latency and errors, and a release of any of them
# changes the shop's conversion by its conversion lever.
SHOP = ShopService("shop", 6000.0, 0.035, 52.0, 4.0, 0.0, 0.0, 100.0, 0.0)
PRODUCT_SERVICES: tuple[ShopService, ...] = (
    ShopService("search", 6000.0, 0.035, 52.0, 4.0, 5.0, 0.002, 80.0, 40.0),
    ShopService("cart", 2500.0, 0.035, 52.0, 4.0, 3.0, 0.003, 140.0, 36.0),
    ShopService("checkout", 600.0, 0.035, 52.0, 4.0, 4.0, 0.004, 220.0, 30.0),
)
PRODUCT_KPIS = ("orders", "revenue", "conversion", "cart_value", "sessions")

SERVICES: tuple[ShopService, ...] = (
    ShopService("atelier", 150.0, 0.06, 95.0, 3.0, 4.0, 0.004, 210.0, 30.0),
    ShopService("basket", 2000.0, 0.045, 58.0, 4.0, 6.0, 0.003, 160.0, 36.0),
    ShopService("storefront", 5000.0, 0.03, 41.0, 5.0, 8.0, 0.002, 95.0, 40.0),
)


@dataclass(frozen=True, slots=True)
class ShopRelease:
    """A release with its true effects (lever -> relative change from its time on)."""

    id: str
    service: str
    time: float
    version: str
    effects: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outage:
    """Telemetry outage: no sample of ``service`` stamped in [start, end)."""

    service: str
    start: float
    end: float


@dataclass(frozen=True)
class ShopWorld:
    """A planned world: everything but the per-minute draws.

    Attributes:
        seed: seeds every draw.
        start: first minute (POSIX seconds).
        days: length in days.
        services: the services.
        releases: releases in time order.
        outages: telemetry outages.
    """

    seed: int
    start: float
    days: int
    services: tuple[ShopService, ...]
    releases: tuple[ShopRelease, ...]
    outages: tuple[Outage, ...]
    # A product world: the shop's sessions, orders and revenue are measured for the product as a
    # whole, and every member service's release moves the shop's conversion by its lever.
    product: ShopService | None = None

    @property
    def minutes(self) -> int:
        """Minutes in the world."""
        return self.days * 1440

    @property
    def end(self) -> float:
        """First time after the world."""
        return self.start + self.days * DAY


# --------------------------------------------------------------------------- planning


def plan_world(
    seed: int,
    days: int = 21,
    *,
    start: float = SHOP_START,
    services: tuple[ShopService, ...] = SERVICES,
    outages_per_day: float = 0.7,
    overlap_probability: float = 0.1,
    post_outage_probability: float = 0.12,
    product: ShopService | None = None,
    gap_minutes: tuple[int, int] = (180, 421),
) -> ShopWorld:
    """Plan a shop: releases with true effects and telemetry outages (no samples drawn yet).

    Releases start a day in, every 3-7 hours per service (uniform, whole minutes); with
    ``overlap_probability`` a second release follows 10-59 minutes later. A release changes
    nothing (~45 %), drops conversion by 5-30 % (~35 %), raises it by 3-15 % (~10 %), slows
    latency by 10-50 % or raises the error rate by 30-150 %; after a regression the next release
    reverts it half of the time (a fix, so gains of up to +43 % exist), and a lever never drifts
    outside [0.55, 1.6] of its base (a release that would is a revert instead).

    Args:
        seed: random seed.
        days: length of the world in days.
        start: first minute (POSIX seconds, a whole minute).
        services: the services.
        outages_per_day: random telemetry outages per service and day (8-12 minutes each).
        overlap_probability: chance that a release comes with an overlapping second one.
        post_outage_probability: chance that an outage starts 0-50 minutes after a release.
        product: plan a product world (`plan_product_world`).
        gap_minutes: a service's releases are this many minutes apart (uniform, [lo, hi)).

    Returns:
        The planned world.
    """
    rng = np.random.default_rng([seed, 101])
    end = start + days * DAY
    rels: list[tuple[str, float]] = []
    for svc in services:
        t = start + DAY + 60.0 * int(rng.integers(0, 180))
        while t < end - MAX_HORIZON:
            rels.append((svc.name, t))
            if rng.random() < overlap_probability:
                t += 60.0 * int(rng.integers(10, 60))
                if t < end - MAX_HORIZON:
                    rels.append((svc.name, t))
            t += 60.0 * int(rng.integers(*gap_minutes))
    rels.sort(key=lambda r: (r[1], r[0]))
    level = {(s.name, lev): 1.0 for s in services for lev in LEVERS}
    last_bad: dict[str, str | None] = {s.name: None for s in services}
    version = {s.name: [2, int(rng.integers(0, 9)), 0] for s in services}
    planned: list[ShopRelease] = []
    for i, (name, t) in enumerate(rels):
        effects: dict[str, float] = {}
        bad = last_bad[name]
        if bad is not None and rng.random() < 0.5:
            effects[bad] = 1.0 / level[(name, bad)] - 1.0  # the fix
            last_bad[name] = None
        else:
            u = rng.random()
            if u < 0.45:
                pass
            elif u < 0.80:
                effects["conversion"] = -float(rng.uniform(0.05, 0.30))
            elif u < 0.90:
                effects["conversion"] = float(rng.uniform(0.03, 0.15))
            elif u < 0.95:
                effects["latency"] = float(rng.uniform(0.10, 0.50))
            else:
                effects["error_rate"] = float(rng.uniform(0.30, 1.50))
            for lev, e in list(effects.items()):
                after = level[(name, lev)] * (1.0 + e)
                if not 0.55 <= after <= 1.6:
                    effects[lev] = 1.0 / level[(name, lev)] - 1.0
                elif (lev == "conversion") == (e < 0):
                    last_bad[name] = lev
        for lev, e in list(effects.items()):
            if abs(e) < 1e-12:
                del effects[lev]
            else:
                level[(name, lev)] *= 1.0 + e
        v = version[name]
        v[2] += 1
        planned.append(
            ShopRelease(f"shop{seed}-rel{i:04d}", name, t, ".".join(map(str, v)), effects)
        )
    outages: list[Outage] = []
    for svc in services:
        for _ in range(int(rng.poisson(outages_per_day * days))):
            t0 = start + 60.0 * int(rng.integers(0, days * 1440))
            outages.append(Outage(svc.name, t0, t0 + 60.0 * int(rng.integers(8, 13))))
    for rel in planned:
        if rng.random() < post_outage_probability:
            t0 = rel.time + 60.0 * int(rng.integers(0, 51))
            outages.append(Outage(rel.service, t0, t0 + 60.0 * int(rng.integers(8, 13))))
    outages.sort(key=lambda o: (o.start, o.service))
    return ShopWorld(seed, start, days, services, tuple(planned), tuple(outages), product)


def plan_product_world(seed: int, days: int = 14) -> ShopWorld:
    """A product world: search, cart and checkout of one shop, each release moving the shop's
    conversion (its conversion lever), their latency and errors their own."""
    # Each service releases every 6-15 hours: the shop sees a release every ~3.5 hours.
    return plan_world(seed, days, services=PRODUCT_SERVICES, product=SHOP, gap_minutes=(360, 901))


# --------------------------------------------------------------------------- rate model


@dataclass(frozen=True, slots=True)
class Rates:
    """True expected per-minute rates of one service over a range of minutes (effects applied)."""

    times: FloatArray
    sessions: FloatArray  # lam
    conversion: FloatArray  # p
    error_rate: FloatArray  # r
    requests_per_session: float
    order_value: float
    order_value_shape: float
    latency_mu: FloatArray  # log median latency (ms)
    latency_n: FloatArray  # expected latency observations a minute


def _diurnal(hours: FloatArray) -> FloatArray:
    x = 0.9 * np.cos(2 * np.pi * (hours - 19.0) / 24) + 0.3 * np.cos(
        4 * np.pi * (hours - 13.0) / 24
    )
    return np.asarray(np.exp(x - 1.05), dtype=np.float64)


def surge_bump(times: FloatArray) -> FloatArray:
    """0..1: how far into the Monday-morning surge each time is (0 outside Monday 06-12 UTC)."""
    days = np.floor(times / DAY)
    monday = ((days + 3) % 7) == 0  # 1970-01-01 was a Thursday
    hours = (times % DAY) / 3600.0
    bump = np.interp(hours, np.array(SURGE_HOURS), np.array([0.0, 1.0, 1.0, 0.0]))
    return np.asarray(np.where(monday, bump, 0.0), dtype=np.float64)


def _levers(world: ShopWorld, service: str, times: FloatArray) -> dict[str, FloatArray]:
    out = {lev: np.ones(len(times)) for lev in LEVERS}
    shop = world.product is not None and service == world.product.name
    for rel in world.releases:
        if shop:  # every member service's release moves the shop's conversion
            on = times >= rel.time
            out["conversion"][on] *= 1.0 + rel.effects.get("conversion", 0.0)
            continue
        if rel.service != service:
            continue
        on = times >= rel.time
        for lev, e in rel.effects.items():
            out[lev][on] *= 1.0 + e
    return out


def rates(
    world: ShopWorld,
    service: str,
    t0: float,
    t1: float,
) -> Rates:
    """The true expected rates of ``service`` for the minutes in [t0, t1).

    Args:
        world: the world.
        service: service name.
        t0: first minute.
        t1: end (exclusive).

    Returns:
        Per-minute rates.
    """
    everyone = (*world.services, *((world.product,) if world.product is not None else ()))
    svc = next(s for s in everyone if s.name == service)
    times = np.arange(t0, t1, 60.0, dtype=np.float64)
    hours = (times % DAY) / 3600.0
    shape = _diurnal(hours)
    weekday = ((np.floor(times / DAY) + 3) % 7).astype(int)
    bump = surge_bump(times)
    traffic = shape * np.asarray(WEEKDAY_LEVEL)[weekday] * (1.0 + SURGE_TRAFFIC * bump)
    lev = _levers(world, service, times)
    conv = svc.conversion * (1.0 + 0.1 * np.cos(2 * np.pi * (hours - 21.0) / 24))
    conv = conv * (1.0 + SURGE_CONVERSION * bump) * lev["conversion"]
    err = svc.error_rate * (1.0 + 0.5 * shape) * lev["error_rate"]
    mu = math.log(svc.latency_ms) + np.log1p(0.4 * shape) + np.log(lev["latency"])
    return Rates(
        times=times,
        sessions=svc.peak_sessions * traffic,
        conversion=np.minimum(conv, 1.0),
        error_rate=np.minimum(err, 1.0),
        requests_per_session=svc.requests_per_session,
        order_value=svc.order_value,
        order_value_shape=svc.order_value_shape,
        latency_mu=mu,
        latency_n=np.maximum(svc.latency_per_minute * shape, 2.0),
    )


# --------------------------------------------------------------------------- draws


@dataclass(frozen=True, slots=True)
class Draw:
    """Drawn per-minute counts of one service; latency values flat, ``latency_n`` per minute."""

    sessions: IntArray
    orders: IntArray
    revenue: FloatArray
    requests: IntArray
    errors: IntArray
    latency_n: IntArray
    latency: FloatArray


def _gamma1(rng: np.random.Generator, cv: float, n: int) -> FloatArray:
    k = 1.0 / (cv * cv)
    return rng.gamma(k, 1.0 / k, n)


def draw(rng: np.random.Generator, r: Rates) -> Draw:
    """Draw one realisation of every stream from the rates (the generator's noise model).

    Args:
        rng: random generator.
        r: true rates.

    Returns:
        Per-minute counts and the latency observations.
    """
    n = len(r.times)
    sessions = rng.poisson(r.sessions * _gamma1(rng, SESSION_CV, n))
    orders = rng.binomial(sessions, np.minimum(r.conversion * _gamma1(rng, CONVERSION_CV, n), 1.0))
    k = r.order_value_shape
    revenue = np.where(
        orders > 0, rng.gamma(np.maximum(orders, 1) * k, r.order_value / k), 0.0
    ).round(2)
    requests = rng.poisson(sessions * r.requests_per_session)
    errors = rng.binomial(requests, np.minimum(r.error_rate * _gamma1(rng, ERROR_CV, n), 1.0))
    lat_n = rng.poisson(r.latency_n)
    mu = r.latency_mu + rng.normal(0.0, LAT_TAU, n)
    lat = np.exp(np.repeat(mu, lat_n) + LAT_SIGMA * rng.standard_normal(int(lat_n.sum())))
    return Draw(sessions, orders, revenue, requests, errors, lat_n, lat.round(1))


def outage_mask(world: ShopWorld, service: str, times: FloatArray) -> NDArray[np.bool_]:
    """True for the minutes of ``times`` inside an outage of ``service``."""
    out = np.zeros(len(times), bool)
    for o in world.outages:
        if o.service == service:
            out |= (times >= o.start) & (times < o.end)
    return out


def generate(world: ShopWorld) -> list[Release | KpiSample]:
    """Every event of the world in event-time order (a release before its minute's samples).

    Per service and minute: sessions, orders, revenue, cart_value (when orders > 0), requests,
    errors as pre-aggregated samples (``count`` = observations summed, as stream_app.simulate
    emits them) and each latency observation as its own ``latency_ms`` sample. Outage minutes
    have no sample at all.

    Args:
        world: the planned world.

    Returns:
        The events.
    """
    per_minute: list[list[Release | KpiSample]] = [[] for _ in range(world.minutes)]
    for rel in world.releases:
        m = int((rel.time - world.start) // 60)
        per_minute[m].append(
            Release(
                id=rel.id, service=rel.service, version=rel.version, time=rel.time, kind="deployed"
            )
        )
    sample = KpiSample
    lab = _NO_LABELS
    if world.product is not None:
        _generate_product(world, world.product, per_minute)
    for s_i, svc in enumerate(world.services):
        rng = np.random.default_rng([world.seed, 202, s_i])
        r = rates(world, svc.name, world.start, world.end)
        d = draw(rng, r)
        gone = outage_mask(world, svc.name, r.times).tolist()
        ts = r.times.tolist()
        ses, orders = d.sessions.astype(float).tolist(), d.orders.astype(float).tolist()
        rev = d.revenue.tolist()
        req, err = d.requests.astype(float).tolist(), d.errors.astype(float).tolist()
        lat = d.latency.tolist()
        ends = np.cumsum(d.latency_n).tolist()
        name = svc.name
        lo = 0
        for m in range(world.minutes):
            hi = ends[m]
            if gone[m]:
                lo = hi
                continue
            t, o = ts[m], orders[m]
            add = per_minute[m].append
            if world.product is None:
                add(sample(name, "sessions", t, ses[m], ses[m], lab))
                add(sample(name, "orders", t, o, o, lab))
                add(sample(name, "revenue", t, rev[m], o, lab))
                if o > 0:
                    add(sample(name, "cart_value", t, rev[m], o, lab))
            add(sample(name, "requests", t, req[m], req[m], lab))
            add(sample(name, "errors", t, err[m], err[m], lab))
            for v in lat[lo:hi]:
                add(sample(name, "latency_ms", t, v, 1.0, lab))
            lo = hi
    return [ev for minute in per_minute for ev in minute]


def _generate_product(
    world: ShopWorld, shop: ShopService, per_minute: list[list[Release | KpiSample]]
) -> None:
    """The shop's own samples (sessions, orders, revenue, cart value), with ``product`` set, sent
    by the shop's front end (service = the product's name), every minute (no outages)."""
    rng = np.random.default_rng([world.seed, 303])
    r = rates(world, shop.name, world.start, world.end)
    d = draw(rng, r)
    ts = r.times.tolist()
    ses, orders = d.sessions.astype(float).tolist(), d.orders.astype(float).tolist()
    rev = d.revenue.tolist()
    name = shop.name
    for m in range(world.minutes):
        t, o = ts[m], orders[m]
        add = per_minute[m].append
        add(KpiSample(name, "sessions", t, ses[m], ses[m], _NO_LABELS, None, name))
        add(KpiSample(name, "orders", t, o, o, _NO_LABELS, None, name))
        add(KpiSample(name, "revenue", t, rev[m], o, _NO_LABELS, None, name))
        if o > 0:
            add(KpiSample(name, "cart_value", t, rev[m], o, _NO_LABELS, None, name))


# --------------------------------------------------------------------------- oracle


def _thin(
    a: FloatArray, var_x: FloatArray, q: FloatArray, cv: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Y | X, W ~ Binomial(X, q W), W ~ Gamma(mean 1, cv): (E[Y], Var(Y), Cov(Y, X)) per minute."""
    c2 = cv * cv
    var = a * q + q * q * (var_x * (1 + c2) + a * a * c2 - a * (1 + c2))
    return a * q, var, q * var_x


def _ratio_log_var(
    num: FloatArray, var_num: FloatArray, den: FloatArray, var_den: FloatArray, cov: FloatArray
) -> float:
    n, d = float(num.sum()), float(den.sum())
    if n <= 0 or d <= 0:
        return math.inf
    return float(var_num.sum() / n**2 + var_den.sum() / d**2 - 2 * cov.sum() / (n * d))


def _p95_log_var(mu: FloatArray, n: FloatArray) -> float:
    """Variance of the log of the pooled p95 of lognormal minutes (weights n, shift LAT_TAU)."""
    total = float(n.sum())
    if total <= 0:
        return math.inf
    w = n / total
    lo = float(mu.min()) + LAT_SIGMA * 1.0
    hi = float(mu.max()) + LAT_SIGMA * 3.0
    for _ in range(60):  # the pooled p95 in log space, by bisection
        mid = (lo + hi) / 2
        if float((w * ndtr((mid - mu) / LAT_SIGMA)).sum()) < P95:
            lo = mid
        else:
            hi = mid
    z = ((lo + hi) / 2 - mu) / LAT_SIGMA
    dens = w * np.exp(-z * z / 2) / math.sqrt(2 * math.pi) / LAT_SIGMA  # d F / d log x
    f = float(dens.sum())
    sampling = P95 * (1 - P95) / (total * f * f)
    shift = float(((dens / f) ** 2).sum()) * LAT_TAU**2
    return sampling + shift


def log_variances(r: Rates) -> dict[str, float]:
    """Oracle variance of log(KPI over the minutes of ``r``) for every KPI, from true rates.

    Args:
        r: the true rates of the minutes that hold telemetry.

    Returns:
        KPI -> variance of the log of its window value (inf when the window holds nothing).
    """
    lam = r.sessions
    var_s = lam + lam * lam * SESSION_CV**2
    mu_o, var_o, cov_os = _thin(lam, var_s, r.conversion, CONVERSION_CV)
    v, k = r.order_value, r.order_value_shape
    var_rev = mu_o * v * v / k + v * v * var_o
    rq = lam * r.requests_per_session
    var_q = rq + r.requests_per_session**2 * var_s
    mu_e, var_e, cov_eq = _thin(rq, var_q, r.error_rate, ERROR_CV)
    o = float(mu_o.sum())
    s = float(lam.sum())
    return {
        "sessions": float(var_s.sum()) / s**2 if s > 0 else math.inf,
        "orders": float(var_o.sum()) / o**2 if o > 0 else math.inf,
        "revenue": float(var_rev.sum()) / (v * o) ** 2 if o > 0 else math.inf,
        "conversion": _ratio_log_var(mu_o, var_o, lam, var_s, cov_os),
        "cart_value": 1.0 / (k * o) if o > 0 else math.inf,
        "error_rate": _ratio_log_var(mu_e, var_e, rq, var_q, cov_eq),
        "latency_p95": _p95_log_var(r.latency_mu, r.latency_n),
    }


def truth(world: ShopWorld) -> list[Truth]:
    """Oracle truth for every (release, KPI) of the world.

    Every lever multiplies its KPIs uniformly over A (no other release of the service acts
    inside A), so the effect on a KPI is exactly the release's lever change (orders, revenue and
    conversion follow conversion; p95 latency scales with latency; 0.0 for untouched KPIs).
    The standard error is sqrt(log_variances) over the minutes of A that hold telemetry.

    Args:
        world: the planned world.

    Returns:
        One Truth per (release, KPI of KPIS), releases in time order.
    """
    out: list[Truth] = []
    by_service: dict[str, list[ShopRelease]] = {}
    for rel in world.releases:
        by_service.setdefault(rel.service, []).append(rel)
    if world.product is not None:
        out.extend(_product_truth(world, world.product))
    for rel in world.releases:
        mine = by_service[rel.service]
        later = [x.time for x in mine if x.time > rel.time]
        alone_end = min([rel.time + MAX_HORIZON, *later[:1]])
        overlaps = tuple(
            x.id for x in mine if x.id != rel.id and abs(x.time - rel.time) < OVERLAP_SECONDS
        )
        r = rates(world, rel.service, rel.time, alone_end)
        gone = outage_mask(world, rel.service, r.times)
        seen = _subset(r, ~gone)
        variances = log_variances(seen)
        bump = surge_bump(np.arange(rel.time - 3600.0, alone_end, 60.0))
        low = float((r.sessions[:60] * r.conversion[:60]).mean()) < LOW_ORDERS
        for kpi, direction in KPIS.items():
            if world.product is not None and kpi in PRODUCT_KPIS:
                continue  # judged at product level (`_product_truth`)
            lever = LEVER_OF_KPI.get(kpi)
            e = rel.effects.get(lever, 0.0) if lever else 0.0
            out.append(
                Truth(
                    world="shop",
                    seed=world.seed,
                    release_id=rel.id,
                    service=rel.service,
                    time=rel.time,
                    kpi=kpi,
                    direction=direction,
                    effect=float(e),
                    alone_end=alone_end,
                    se=math.sqrt(variances[kpi]),
                    overlaps=overlaps,
                    surge=bool(bump.max() > 0),
                    gap=bool(gone.any()),
                    low_traffic=low,
                )
            )
    return out


def _product_truth(world: ShopWorld, shop: ShopService) -> list[Truth]:
    """Oracle truth of every release on the shop's product-level KPIs.

    The releases of all member services are one sequence here: a release is alone until the next
    release of any member service, and overlaps every member release within OVERLAP_SECONDS. The
    shop's conversion moves by the release's conversion lever (so do orders and revenue; cart
    value and sessions do not move).
    """
    out: list[Truth] = []
    rels = world.releases
    for rel in rels:
        later = [x.time for x in rels if x.time > rel.time]
        alone_end = min([rel.time + MAX_HORIZON, *later[:1]])
        overlaps = tuple(
            x.id for x in rels if x.id != rel.id and abs(x.time - rel.time) < OVERLAP_SECONDS
        )
        r = rates(world, shop.name, rel.time, alone_end)
        variances = log_variances(r)
        bump = surge_bump(np.arange(rel.time - 3600.0, alone_end, 60.0))
        low = float((r.sessions[:60] * r.conversion[:60]).mean()) < LOW_ORDERS
        for kpi in PRODUCT_KPIS:
            lever = LEVER_OF_KPI.get(kpi)
            e = rel.effects.get(lever, 0.0) if lever else 0.0
            out.append(
                Truth(
                    world="shop",
                    seed=world.seed,
                    release_id=rel.id,
                    service=rel.service,
                    time=rel.time,
                    kpi=kpi,
                    direction=KPIS[kpi],
                    effect=float(e),
                    alone_end=alone_end,
                    se=math.sqrt(variances[kpi]),
                    overlaps=overlaps,
                    surge=bool(bump.max() > 0),
                    gap=False,
                    low_traffic=low,
                )
            )
    return out


def _subset(r: Rates, keep: NDArray[np.bool_]) -> Rates:
    return Rates(
        times=r.times[keep],
        sessions=r.sessions[keep],
        conversion=r.conversion[keep],
        error_rate=r.error_rate[keep],
        requests_per_session=r.requests_per_session,
        order_value=r.order_value,
        order_value_shape=r.order_value_shape,
        latency_mu=r.latency_mu[keep],
        latency_n=r.latency_n[keep],
    )


def window_values(d: Draw, keep: NDArray[np.bool_] | None = None) -> dict[str, float]:
    """Observed KPI values of one draw over its minutes (``keep``: the minutes counted).

    Args:
        d: a draw.
        keep: minutes to count (all when None).

    Returns:
        KPI -> value over the window (nan where undefined).
    """
    n = len(d.sessions)
    k = np.ones(n, bool) if keep is None else keep
    s, o = float(d.sessions[k].sum()), float(d.orders[k].sum())
    rev = float(d.revenue[k].sum())
    q, e = float(d.requests[k].sum()), float(d.errors[k].sum())
    lat_keep = np.repeat(k, d.latency_n)
    lat = d.latency[lat_keep]
    return {
        "sessions": s,
        "orders": o,
        "revenue": rev,
        "conversion": o / s if s else math.nan,
        "cart_value": rev / o if o else math.nan,
        "error_rate": e / q if q else math.nan,
        "latency_p95": float(np.quantile(lat, P95)) if len(lat) else math.nan,
    }
