"""A simulated shop with known ground truth: releases, KPI samples, work items and incidents."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from stream_app.events.model import (
    Incident,
    ItemType,
    KpiSample,
    Release,
    ReleaseKind,
    WorkflowEvent,
)

SimEvent = Release | KpiSample | WorkflowEvent | Incident
"""What `generate` yields: the same union the codec calls ``Decoded``."""

Regime = Literal["low", "ramp", "steady"]
FloatArray = NDArray[np.float64]

DAY = 86400.0
WEEK = 7 * DAY

# Effect levers: what a release can change. KPI truth is derived from these (see ground_truth).
LEVERS: tuple[str, ...] = ("sessions", "conversion", "cart_value", "latency_ms", "error_rate")
# The KPIs of the bundled catalog, with their good direction.
KPI_DIRECTION: dict[str, Literal["up", "down"]] = {
    "orders": "up",
    "revenue": "up",
    "conversion": "up",
    "cart_value": "up",
    "latency_p95": "down",
    "error_rate": "down",
}
TRUTH_KPIS: tuple[str, ...] = tuple(KPI_DIRECTION)
# Sample streams every service emits (latency_ms: several single observations per sample period).
STREAMS: tuple[str, ...] = (
    "sessions",
    "orders",
    "revenue",
    "cart_value",
    "requests",
    "errors",
    "latency_ms",
)
EFFECT_LEVELS: tuple[float, ...] = (-0.10, -0.05, 0.0, 0.05, 0.10)

DEMO_START = 1717480800.0  # Tuesday 2024-06-04 06:00 UTC
WEEKLY_START = 1717286400.0  # Sunday 2024-06-02 00:00 UTC
ACCURACY_START = 1717372800.0  # Monday 2024-06-03 00:00 UTC

# Diurnal traffic shape in local hours: quiet night, morning ramp 6-10, evening peak.
_DIURNAL_HOURS = np.array([0, 2, 4, 5, 6, 7, 8, 9, 10, 12, 14, 17, 19, 21, 22, 23, 24], float)
_DIURNAL_LEVEL = np.array(
    [0.35, 0.18, 0.12, 0.13, 0.22, 0.4, 0.62, 0.8, 0.9, 0.95, 0.9, 0.92, 1.0, 0.95, 0.8, 0.55, 0.35]
)
# Extra Monday-morning traffic (local hours): rises 6-10, holds to 12, gone by 15.
_MONDAY_HOURS = np.array([0, 6, 10, 12, 15, 24], float)
_MONDAY_LEVEL = np.array([0, 0, 1, 1, 0, 0], float)
_LATENCY_LOAD = 0.3  # latency median grows by 30 % from idle to peak traffic
_P95 = 0.95
_Z95 = 1.6448536269514722


# --------------------------------------------------------------------------- scenario types


@dataclass(frozen=True, slots=True)
class ServiceProfile:
    """Traffic and behaviour of one simulated service.

    Attributes:
        name: service name (the Kafka key of its events).
        peak_sessions_per_minute: sessions per minute at the daily peak, all regions together.
        conversion: probability that a session orders.
        cart_value_mean: mean cart value of an order (lognormal).
        cart_value_sigma: sigma of log cart value.
        latency_median_ms: median request latency when idle (grows with load).
        latency_sigma: sigma of log latency.
        error_rate: probability that a request fails.
        requests_per_session: mean requests per session (Poisson).
    """

    name: str
    peak_sessions_per_minute: float
    conversion: float = 0.05
    cart_value_mean: float = 60.0
    cart_value_sigma: float = 0.6
    latency_median_ms: float = 120.0
    latency_sigma: float = 0.45
    error_rate: float = 0.004
    requests_per_session: float = 6.0


_KNOWN_SERVICES: dict[str, ServiceProfile] = {
    "checkout": ServiceProfile("checkout", 4000, 0.06, 72.0, 0.55, 180.0, 0.40, 0.003, 5.0),
    "catalog": ServiceProfile("catalog", 6000, 0.03, 55.0, 0.60, 90.0, 0.45, 0.002, 9.0),
    "payments": ServiceProfile("payments", 1500, 0.07, 80.0, 0.50, 250.0, 0.35, 0.005, 3.0),
    "search": ServiceProfile("search", 5000, 0.035, 48.0, 0.65, 110.0, 0.50, 0.004, 7.0),
}


def service_profile(name: str, peak_sessions_per_minute: float | None = None) -> ServiceProfile:
    """The default profile of a service: shop-like values for known names, generic otherwise.

    Args:
        name: service name; checkout, catalog, payments and search have tuned profiles.
        peak_sessions_per_minute: overrides the traffic level when given.

    Returns:
        The profile.
    """
    base = _KNOWN_SERVICES.get(name) or ServiceProfile(name, 2000.0)
    if peak_sessions_per_minute is None:
        return base
    return dataclasses.replace(base, peak_sessions_per_minute=peak_sessions_per_minute)


@dataclass(frozen=True, slots=True)
class Region:
    """A traffic region: its label value on samples, its share of traffic and its clock."""

    name: str
    share: float
    utc_offset_hours: float


DEFAULT_REGIONS: tuple[Region, ...] = (Region("eu", 0.6, 1.0), Region("us", 0.4, -5.0))


@dataclass(frozen=True, slots=True)
class TrafficDip:
    """A low-traffic period: sessions are multiplied by ``factor`` in [start, end)."""

    start: float
    end: float
    factor: float
    services: tuple[str, ...] = ()  # empty: every service


@dataclass(frozen=True, slots=True)
class PlannedRelease:
    """A release the simulator will emit, with its true effects.

    Attributes:
        service: the released service.
        time: event time, a whole minute (POSIX seconds).
        version: version string (for a flag: "<flag>=<variation>@<pct>%").
        kind: deployed, upgraded, rolledback or flag.
        effects: lever -> relative effect from ``time`` on (e.g. {"conversion": -0.08});
            levers are sessions, conversion, cart_value, latency_ms, error_rate. The effect is the
            one the affected traffic shows (for a flag: the whole service, not per exposed user).
        scope: e.g. {"region": "eu"}: only that region's traffic changes. Empty: the whole service.
        flag_key: the flag of a flag change.
        rollout_percent: the flag's rollout.
        label: free-text tag for humans and tests (e.g. "bad", "good", "neutral").
    """

    service: str
    time: float
    version: str
    kind: ReleaseKind = "deployed"
    effects: dict[str, float] = field(default_factory=dict)
    scope: dict[str, str] = field(default_factory=dict)
    flag_key: str | None = None
    rollout_percent: float | None = None
    label: str = ""


@dataclass(frozen=True, slots=True)
class Stage:
    """A value-stream stage a work item passes through; durations are lognormal around the mean."""

    name: str
    state: Literal["active", "waiting"]
    mean_minutes: float


DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage("backlog", "waiting", 90),
    Stage("dev", "active", 180),
    Stage("review", "active", 45),
    Stage("waiting-for-qa", "waiting", 600),  # the injected bottleneck
    Stage("qa", "active", 60),
    Stage("deploy", "active", 20),
)


@dataclass(frozen=True, slots=True)
class WorkflowPlan:
    """Work items flowing through stages; the last stage of a delivered item ends at its release.

    Attributes:
        items_per_release: mean work items shipped by each deployed/upgraded release.
        wip_items: items started late that are still in progress at the end.
        stages: the stages in order; the longest mean is the bottleneck.
        duration_sigma: sigma of log stage duration.
    """

    items_per_release: float = 3.0
    wip_items: int = 6
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    duration_sigma: float = 0.5

    @property
    def bottleneck(self) -> str:
        """The stage with the longest mean duration."""
        return max(self.stages, key=lambda s: s.mean_minutes).name


@dataclass(frozen=True, slots=True)
class PlannedIncident:
    """An incident: detected (and maybe resolved), optionally linked to a release by index."""

    service: str
    detected: float
    resolved: float | None = None
    release: int | None = None  # index into Scenario.releases
    description: str = ""


@dataclass(frozen=True)
class Scenario:
    """Everything that defines a simulated run; the same scenario always yields the same events.

    Attributes:
        seed: seeds every random draw.
        start: first event time (whole minute, POSIX seconds).
        duration_seconds: length of the run in event time.
        services: service profiles.
        regions: traffic regions; samples carry {"region": name}.
        releases: planned releases (ids are derived from seed and index).
        incidents: planned incidents.
        workflow: work items, or None for none.
        samples_per_minute: pre-aggregated samples per stream, region and minute (volume knob).
        order_events: emit orders, revenue and cart_value once per order instead of per minute.
        latency_samples: latency observations per region and sample period.
        traffic_noise: sigma of a lognormal per-sample traffic shock (extra-Poisson variance).
        weekday_factors: traffic level per weekday, Monday first (interpolated smoothly).
        monday_boost: extra relative traffic on Monday mornings (local time).
        dips: low-traffic periods.
        coarse_seconds: when set, far from releases (and from their day- and week-ago
            references) one sample per this many seconds is emitted instead of per minute.
        detail_seconds: half-width of the per-minute period around releases in coarse mode.
        window_seconds: the KPI windows (baseline = post) the truth is computed for.
        environment: environment of the releases and incidents.
    """

    seed: int
    start: float
    duration_seconds: float
    services: tuple[ServiceProfile, ...]
    regions: tuple[Region, ...] = DEFAULT_REGIONS
    releases: tuple[PlannedRelease, ...] = ()
    incidents: tuple[PlannedIncident, ...] = ()
    workflow: WorkflowPlan | None = None
    samples_per_minute: int = 1
    order_events: bool = False
    latency_samples: int = 10
    traffic_noise: float = 0.03
    weekday_factors: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 0.95, 0.8, 0.85)
    monday_boost: float = 0.0
    dips: tuple[TrafficDip, ...] = ()
    coarse_seconds: float | None = None
    detail_seconds: float = 5 * 3600.0  # the longest baseline and horizon (4 h), and some
    window_seconds: float = 3600.0
    environment: str = "production"

    def __post_init__(self) -> None:
        names = [s.name for s in self.services]
        regions = {r.name for r in self.regions}
        if not names or len(set(names)) != len(names):
            raise ValueError("services must be non-empty and unique")
        if self.start % 60 or self.duration_seconds < 60:
            raise ValueError("start must be a whole minute and duration at least one minute")
        if self.samples_per_minute < 1 or self.latency_samples < 0:
            raise ValueError("samples_per_minute must be >= 1 and latency_samples >= 0")
        if len(self.weekday_factors) != 7:
            raise ValueError("weekday_factors needs 7 values, Monday first")
        for r in self.releases:
            if r.service not in names:
                raise ValueError(f"release of unknown service {r.service!r}")
            if r.time % 60 or not self.start <= r.time < self.end:
                raise ValueError(f"release time {r.time} must be a whole minute inside the run")
            if bad := set(r.effects) - set(LEVERS):
                raise ValueError(f"unknown effect levers {sorted(bad)}; use {LEVERS}")
            if set(r.scope) - {"region"} or not set(r.scope.values()) <= regions:
                raise ValueError(f"scope {r.scope} must name one of the regions {sorted(regions)}")
        for inc in self.incidents:
            if inc.release is not None and not 0 <= inc.release < len(self.releases):
                raise ValueError(f"incident links unknown release index {inc.release}")

    @property
    def end(self) -> float:
        """First time after the run (exclusive)."""
        return self.start + self.duration_seconds

    def release_id(self, index: int) -> str:
        """Deterministic id of ``releases[index]``."""
        return f"sim{self.seed}-rel{index:04d}"


# --------------------------------------------------------------------------- traffic model


def _traffic_shape(scenario: Scenario, times: FloatArray) -> FloatArray:
    """Relative traffic (0..~1.3) per region and time: diurnal x weekday x Monday boost."""
    out = np.empty((len(scenario.regions), len(times)))
    wf = np.asarray(scenario.weekday_factors, float)
    for i, region in enumerate(scenario.regions):
        local = times + region.utc_offset_hours * 3600.0
        hours = (local % DAY) / 3600.0
        level = np.interp(hours, _DIURNAL_HOURS, _DIURNAL_LEVEL)
        # Weekday levels sit at local noon and are interpolated so traffic never jumps at midnight.
        x = local / DAY - 0.5
        k = np.floor(x)
        frac = x - k
        wd = ((k + 3) % 7).astype(int)  # 1970-01-01 was a Thursday; Monday = 0
        level *= wf[wd] * (1 - frac) + wf[(wd + 1) % 7] * frac
        if scenario.monday_boost:
            monday = ((np.floor(local / DAY) + 3) % 7) == 0
            bump = np.interp(hours, _MONDAY_HOURS, _MONDAY_LEVEL)
            level *= 1.0 + scenario.monday_boost * bump * monday
        out[i] = level
    return out


def _dip_factor(scenario: Scenario, service: str, times: FloatArray) -> FloatArray:
    f = np.ones(len(times))
    for d in scenario.dips:
        if not d.services or service in d.services:
            f[(times >= d.start) & (times < d.end)] *= d.factor
    return f


def _base_rates(scenario: Scenario, times: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Expected sessions per minute (service, region, t) and log latency medians, before effects."""
    shape = _traffic_shape(scenario, times)
    n_s, n_r = len(scenario.services), len(scenario.regions)
    sessions = np.empty((n_s, n_r, len(times)))
    lat_mu = np.empty((n_s, n_r, len(times)))
    load = np.log1p(_LATENCY_LOAD * shape)
    for s, svc in enumerate(scenario.services):
        dip = _dip_factor(scenario, svc.name, times)
        for r, region in enumerate(scenario.regions):
            sessions[s, r] = svc.peak_sessions_per_minute * region.share * shape[r] * dip
            lat_mu[s, r] = math.log(svc.latency_median_ms) + load[r]
    return sessions, lat_mu


def _region_hit(scope: dict[str, str], regions: tuple[Region, ...]) -> list[int]:
    want = scope.get("region")
    return [i for i, r in enumerate(regions) if want is None or r.name == want]


# --------------------------------------------------------------------------- planned events


def _sha(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


_ITEM_TYPES: tuple[ItemType, ...] = ("feature", "defect", "debt", "risk")
_ITEM_WEIGHTS = np.array([0.6, 0.25, 0.1, 0.05])


def _stage_durations(
    rng: np.random.Generator, plan: WorkflowPlan, n_items: int
) -> NDArray[np.float64]:
    means = np.array([s.mean_minutes for s in plan.stages]) * 60.0
    sig = plan.duration_sigma
    return means * rng.lognormal(-sig * sig / 2, sig, size=(n_items, len(means)))


def _workflow(
    scenario: Scenario,
) -> tuple[list[WorkflowEvent], dict[int, list[tuple[str, str]]]]:
    """Work-item events, and per release index the (item id, commit sha) it ships."""
    plan = scenario.workflow
    shipped: dict[int, list[tuple[str, str]]] = {}
    if plan is None:
        return [], shipped
    rng = np.random.default_rng([scenario.seed, 2])
    events: list[WorkflowEvent] = []
    counter = 0

    def emit(item: str, service: str, kind: ItemType, bounds: Sequence[float], sha: str) -> None:
        for k, stage in enumerate(plan.stages[: len(bounds) - 1]):
            for action, t in (("entered", bounds[k]), ("left", bounds[k + 1])):
                if t >= scenario.end:
                    return
                last = action == "left" and k == len(plan.stages) - 1
                events.append(
                    WorkflowEvent(
                        id=f"{item}-{stage.name}-{action}",
                        time=float(t),
                        service=service,
                        item_id=item,
                        item_type=kind,
                        stage=stage.name,
                        action="entered" if action == "entered" else "left",
                        state=stage.state,
                        commits=(sha,) if last else (),
                        outcome="deployed" if last else None,
                    )
                )

    for idx, rel in enumerate(scenario.releases):
        if rel.kind not in ("deployed", "upgraded"):
            continue
        n = int(rng.poisson(plan.items_per_release))
        for _ in range(n):
            durations = _stage_durations(rng, plan, 1)[0]
            kind = _ITEM_TYPES[int(rng.choice(4, p=_ITEM_WEIGHTS))]
            # Delivered items are planned backwards from their release so lead times are exact.
            bounds = rel.time - np.concatenate([np.cumsum(durations[::-1])[::-1], [0.0]])
            bounds = np.round(bounds)
            if bounds[0] < scenario.start:
                continue
            item = f"sim{scenario.seed}-item{counter:04d}"
            counter += 1
            sha = _sha(scenario.seed, item)
            shipped.setdefault(idx, []).append((item, sha))
            emit(item, rel.service, kind, bounds.tolist(), sha)
    names = [s.name for s in scenario.services]
    for _ in range(plan.wip_items):
        service = names[int(rng.integers(len(names)))]
        durations = _stage_durations(rng, plan, 1)[0][:-1]  # never reaches a release
        kind = _ITEM_TYPES[int(rng.choice(4, p=_ITEM_WEIGHTS))]
        begin = scenario.end - rng.uniform(0.1, 0.6) * durations.sum()
        begin = max(begin, scenario.start)
        bounds = np.round(begin + np.concatenate([[0.0], np.cumsum(durations)]))
        item = f"sim{scenario.seed}-item{counter:04d}"
        counter += 1
        emit(item, service, kind, bounds.tolist(), _sha(scenario.seed, item))
    return events, shipped


def releases(scenario: Scenario) -> list[Release]:
    """The Release events of a scenario, in ``scenario.releases`` order, with their ids.

    Args:
        scenario: the scenario.

    Returns:
        One Release per planned release; ``commits``/``change_ids`` name the work items it ships.
    """
    _, shipped = _workflow(scenario)
    return _releases(scenario, shipped)


def _releases(scenario: Scenario, shipped: dict[int, list[tuple[str, str]]]) -> list[Release]:
    out = []
    for idx, p in enumerate(scenario.releases):
        items = shipped.get(idx, [])
        out.append(
            Release(
                id=scenario.release_id(idx),
                service=p.service,
                version=p.version,
                time=p.time,
                kind=p.kind,
                environment=scenario.environment,
                commits=tuple(sha for _, sha in items),
                change_ids=tuple(item for item, _ in items),
                flag_key=p.flag_key,
                rollout_percent=p.rollout_percent,
                scope=dict(p.scope),
            )
        )
    return out


def _incidents(scenario: Scenario) -> list[Incident]:
    out = []
    for i, inc in enumerate(scenario.incidents):
        incident_id = f"sim{scenario.seed}-inc{i:03d}"
        link = None if inc.release is None else scenario.release_id(inc.release)
        stamps: list[tuple[Literal["detected", "resolved"], float | None]] = [
            ("detected", inc.detected),
            ("resolved", inc.resolved),
        ]
        for action, t in stamps:
            if t is None or not scenario.start <= t < scenario.end:
                continue
            out.append(
                Incident(
                    id=f"{incident_id}-{action}",
                    incident_id=incident_id,
                    time=t,
                    service=inc.service,
                    action=action,
                    environment=scenario.environment,
                    deployment_id=link,
                    description=inc.description or None,
                )
            )
    return out


def planned_events(scenario: Scenario) -> list[Release | WorkflowEvent | Incident]:
    """The scenario's releases, incidents and work-item events (no samples), in time order.

    Args:
        scenario: the scenario.

    Returns:
        The same non-sample events `generate` yields, in the same order (a few hundred at most).
    """
    wf, shipped = _workflow(scenario)
    rank = {Release: 0, Incident: 1, WorkflowEvent: 2}
    evs: list[Release | WorkflowEvent | Incident] = [
        *_releases(scenario, shipped),
        *_incidents(scenario),
        *wf,
    ]
    # Stable: a release precedes the samples and other events of its own timestamp.
    evs.sort(key=lambda e: (e.time, rank[type(e)]))
    return evs


# --------------------------------------------------------------------------- generator


def _detail_mask(scenario: Scenario, n_min: int) -> NDArray[np.bool_]:
    """Minutes that get full-resolution samples (all of them unless coarse mode is on)."""
    if scenario.coarse_seconds is None:
        return np.ones(n_min, bool)
    mask = np.zeros(n_min, bool)
    half = int(scenario.detail_seconds // 60)
    for r in scenario.releases:
        m = int((r.time - scenario.start) // 60)
        mask[m] = True  # a coarse sample never straddles a release
        # The release's own windows and the same hours every earlier day of the week: the
        # judge's seasonal references.
        for off in (*(int(d * DAY // 60) for d in range(7)), int(WEEK // 60)):
            lo, hi = max(0, m - off - half), min(n_min, m - off + half)
            if lo < hi:
                mask[lo:hi] = True
    return mask


def generate(scenario: Scenario) -> Iterator[SimEvent]:
    """Yield the scenario's events in event-time order, deterministically from its seed.

    Streams tick by tick: only per-minute rate arrays are precomputed, never the events, so
    millions of events cost no memory. Each sample
    stamped ``t`` aggregates the traffic of [t, t + period); a release at ``t`` is yielded before
    the samples of ``t`` and affects them.

    Args:
        scenario: what to simulate.

    Yields:
        Release, KpiSample, WorkflowEvent and Incident events with non-decreasing ``time``.
    """
    sc = scenario
    rng = np.random.default_rng([sc.seed, 1])
    n_min = int(sc.duration_seconds // 60)
    n_s, n_r = len(sc.services), len(sc.regions)
    n_g = n_s * n_r
    times = (sc.start + 60.0 * np.arange(n_min)).astype(np.float64)
    base, lat_mu = _base_rates(sc, times)
    base = base.reshape(n_g, n_min)
    lat_mu = lat_mu.reshape(n_g, n_min)
    detail = _detail_mask(sc, n_min)
    coarse_min = max(1, int((sc.coarse_seconds or 60) // 60))

    svc_of = [sc.services[g // n_r] for g in range(n_g)]
    names = [s.name for s in svc_of]
    # One labels dict per region, shared by its samples to keep the hot loop allocation-free;
    # consumers treat events as immutable.
    region_labels = [{"region": r.name} for r in sc.regions]
    labels = [region_labels[g % n_r] for g in range(n_g)]
    conv = np.array([s.conversion for s in svc_of])
    cart_mu = np.log([s.cart_value_mean for s in svc_of]) - np.array(
        [s.cart_value_sigma**2 / 2 for s in svc_of]
    )
    cart_sig = np.array([s.cart_value_sigma for s in svc_of])
    rps = np.array([s.requests_per_session for s in svc_of])
    err = np.array([s.error_rate for s in svc_of])
    lat_sig = np.array([s.latency_sigma for s in svc_of])
    lever = {k: np.ones(n_g) for k in LEVERS}
    svc_index = {s.name: i for i, s in enumerate(sc.services)}
    plan_order = sorted(range(len(sc.releases)), key=lambda i: sc.releases[i].time)
    next_plan = 0
    noise = sc.traffic_noise
    k = sc.samples_per_minute
    per_order_mode = sc.order_events
    g_index = np.arange(n_g)

    others = planned_events(sc)
    pos = 0

    def tick(t0: float, span: float, lam: FloatArray, mu_lat: FloatArray) -> list[SimEvent]:
        """The events of one sample period [t0, t0 + span), in time order."""
        nonlocal pos
        out: list[SimEvent] = []
        add = out.append
        sample = KpiSample
        while pos < len(others) and others[pos].time <= t0:
            add(others[pos])
            pos += 1
        if noise > 0:
            lam = lam * np.exp(rng.normal(-noise * noise / 2, noise, n_g))
        sessions = rng.poisson(lam)
        orders = rng.binomial(sessions, np.minimum(conv * lever["conversion"], 1.0))
        owner = np.repeat(g_index, orders)
        carts = np.exp(
            cart_mu[owner]
            + np.log(lever["cart_value"][owner])
            + cart_sig[owner] * rng.standard_normal(len(owner))
        ).round(2)
        revenue = np.bincount(owner, weights=carts, minlength=n_g).round(2)
        requests = rng.poisson(sessions * rps)
        errors = rng.binomial(requests, np.minimum(err * lever["error_rate"], 1.0))
        lat = np.exp(
            (mu_lat + np.log(lever["latency_ms"]))[:, None]
            + lat_sig[:, None] * rng.standard_normal((n_g, sc.latency_samples))
        ).round(1)
        s_l = sessions.astype(float).tolist()
        o_l = orders.astype(float).tolist()
        r_l = revenue.tolist()
        q_l = requests.astype(float).tolist()
        e_l = errors.astype(float).tolist()
        lat_l = lat.tolist()
        for g in range(n_g):
            svc, lab = names[g], labels[g]
            s, o, q, e = s_l[g], o_l[g], q_l[g], e_l[g]
            add(sample(svc, "sessions", t0, s, s, lab))
            if not per_order_mode:
                add(sample(svc, "orders", t0, o, o, lab))
                add(sample(svc, "revenue", t0, r_l[g], o, lab))
                if o > 0:  # a mean over no orders is undefined: no cart sample
                    add(sample(svc, "cart_value", t0, r_l[g], o, lab))
            add(sample(svc, "requests", t0, q, q, lab))
            add(sample(svc, "errors", t0, e, e, lab))
            for v in lat_l[g]:
                add(sample(svc, "latency_ms", t0, v, 1.0, lab))
        if per_order_mode and len(owner):
            stamps = t0 + rng.uniform(0.0, span, len(owner))
            order = np.argsort(stamps, kind="stable")
            rows = zip(
                stamps[order].tolist(), owner[order].tolist(), carts[order].tolist(), strict=True
            )
            for ts, g, c in rows:
                while pos < len(others) and others[pos].time <= ts:
                    add(others[pos])
                    pos += 1
                svc, lab = names[g], labels[g]
                add(sample(svc, "orders", ts, 1.0, 1.0, lab))
                add(sample(svc, "revenue", ts, c, 1.0, lab))
                add(sample(svc, "cart_value", ts, c, 1.0, lab))
        return out

    i = 0
    while i < n_min:
        t_min = sc.start + 60.0 * i
        while next_plan < len(plan_order) and sc.releases[plan_order[next_plan]].time <= t_min:
            p = sc.releases[plan_order[next_plan]]
            s_i = svc_index[p.service]
            for r in _region_hit(p.scope, sc.regions):
                for lev, eff in p.effects.items():
                    lever[lev][s_i * n_r + r] *= 1.0 + eff
            next_plan += 1
        if detail[i]:
            lam = base[:, i] * lever["sessions"] / k
            for j in range(k):
                yield from tick(t_min + 60.0 * j / k, 60.0 / k, lam, lat_mu[:, i])
            i += 1
            continue
        j = i + 1
        while j < min(i + coarse_min, n_min) and not detail[j]:
            j += 1
        lam = base[:, i:j].sum(axis=1) * lever["sessions"]
        mu = np.log(np.exp(lat_mu[:, i:j]).mean(axis=1))
        yield from tick(t_min, 60.0 * (j - i), lam, mu)
        i = j
    while pos < len(others) and others[pos].time < sc.end:
        yield others[pos]
        pos += 1


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True, slots=True)
class TruthRecord:
    """What is true about one (release, KPI) pair of a scenario.

    Attributes:
        release_id: id of the Release event.
        service: released service.
        version: released version.
        time: release time.
        kind: release kind.
        label: the planned release's label.
        scope: the planned release's scope.
        kpi: KPI name of the bundled catalog (orders, revenue, conversion, cart_value,
            latency_p95, error_rate).
        effect: true relative effect of this release on the KPI over its post window
            (expected KPI with the release / without it - 1, everything else as simulated).
        overlaps: ids of same-service releases less than one window away (expect confounded).
        regime: "low" (thin night traffic), "ramp" (traffic changes >12 % between the windows
            without any release) or "steady".
        naive_change: expected post / baseline - 1 with all releases and seasonality: what a
            detector without seasonal correction sees.
        baseline_sessions: expected sessions in the baseline window.
        post_sessions: expected sessions in the post window.
        baseline_observations: expected observations behind the KPI in the baseline window
            (orders for order KPIs, latency samples, errors for error_rate).
        post_observations: the same for the post window.
        se: approximate standard error of log(post/baseline) from sampling noise, without a
            seasonal reference (a day- or week-ago correction adds roughly a factor sqrt(2)).
    """

    release_id: str
    service: str
    version: str
    time: float
    kind: ReleaseKind
    label: str
    scope: dict[str, str]
    kpi: str
    effect: float
    overlaps: tuple[str, ...]
    regime: Regime
    naive_change: float
    baseline_sessions: float
    post_sessions: float
    baseline_observations: float
    post_observations: float
    se: float

    @property
    def confounded(self) -> bool:
        """Whether another release of the service overlaps this one's windows."""
        return bool(self.overlaps)

    @property
    def expected_z(self) -> float:
        """|log(1 + effect)| in standard errors: how visible the effect is in the windows."""
        return abs(math.log1p(self.effect)) / self.se if self.se > 0 else math.inf

    def acceptable_verdicts(
        self, min_change: float = 0.02, min_z: float = 3.0, seasonal_factor: float = 1.0
    ) -> frozenset[str]:
        """The verdicts a sound judge may give for this pair.

        Args:
            min_change: the KPI's smallest relative change that matters.
            min_z: standard errors needed to call an effect seen.
            seasonal_factor: multiplies ``se`` (e.g. sqrt(2) with a seasonal reference).

        Returns:
            ``{"confounded"}`` for overlapping releases; the effect's direction when it is big and
            visible; that or ``inconclusive`` when the data are thin; ``neutral`` (or
            ``inconclusive`` when thin) for effects below ``min_change``.
        """
        if self.overlaps:
            return frozenset({"confounded"})
        se = self.se * seasonal_factor
        good = (self.effect > 0) == (KPI_DIRECTION[self.kpi] == "up")
        direction = "improved" if good else "degraded"
        z = abs(math.log1p(self.effect)) / se if se > 0 else math.inf
        if abs(self.effect) >= min_change:
            return frozenset({direction} if z >= min_z else {direction, "inconclusive"})
        out = {"neutral"}
        if 1.96 * se >= min_change - abs(self.effect):
            out.add("inconclusive")
        if self.effect != 0 and z >= min_z:
            out.add(direction)
        return frozenset(out)


@dataclass(frozen=True, slots=True)
class _Window:
    sessions: float
    orders: float
    revenue: float
    requests: float
    errors: float
    p95: float
    latency_n: float
    var_orders: float
    var_revenue: float

    def kpi(self, name: str) -> float:
        return {
            "orders": self.orders,
            "revenue": self.revenue,
            "conversion": self.orders / self.sessions if self.sessions else math.nan,
            "cart_value": self.revenue / self.orders if self.orders else math.nan,
            "latency_p95": self.p95,
            "error_rate": self.errors / self.requests if self.requests else math.nan,
        }[name]


def _mixture_p95(mu: FloatArray, sigma: float) -> FloatArray:
    """p95 per column of an equal-weight mixture of lognormals (rows = components)."""
    lo = mu.min(axis=0) + sigma * _Z95
    hi = mu.max(axis=0) + sigma * _Z95 + 1e-12
    target = _P95 * len(mu)
    # The bracket is at most a few tenths wide in log space: 40 halvings reach ~1e-13.
    for _ in range(40):
        mid = (lo + hi) / 2
        below = ndtr((mid - mu) / sigma).sum(axis=0) < target
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return np.asarray(np.exp((lo + hi) / 2), dtype=np.float64)


def _expected(
    scenario: Scenario,
    s: int,
    t0: float,
    t1: float,
    active: Sequence[PlannedRelease],
    latency: bool = True,
) -> _Window:
    """Expected sums of service ``s`` over [t0, t1) with the ``active`` releases applied."""
    times = np.arange(t0, t1, 60.0).astype(np.float64)
    base, lat_mu = _base_rates(scenario, times)
    svc = scenario.services[s]
    n_r = len(scenario.regions)
    mult = {k: np.ones((n_r, len(times))) for k in LEVERS}
    for p in active:
        if p.service != svc.name:
            continue
        on = times >= p.time
        for r in _region_hit(p.scope, scenario.regions):
            for lev, eff in p.effects.items():
                mult[lev][r, on] *= 1.0 + eff
    sessions = base[s] * mult["sessions"]
    orders = sessions * np.minimum(svc.conversion * mult["conversion"], 1.0)
    revenue = orders * svc.cart_value_mean * mult["cart_value"]
    requests = sessions * svc.requests_per_session
    errors = requests * np.minimum(svc.error_rate * mult["error_rate"], 1.0)
    mu = lat_mu[s] + np.log(mult["latency_ms"])
    p95 = _mixture_p95(mu, svc.latency_sigma) if latency else np.full(len(times), math.nan)
    cv2 = math.expm1(svc.cart_value_sigma**2)
    noise2 = scenario.traffic_noise**2
    lat_n = scenario.latency_samples * scenario.samples_per_minute * n_r * len(times)
    return _Window(
        sessions=float(sessions.sum()),
        orders=float(orders.sum()),
        revenue=float(revenue.sum()),
        requests=float(requests.sum()),
        errors=float(errors.sum()),
        p95=float(p95.mean()),
        latency_n=float(lat_n),
        var_orders=float((orders + noise2 * orders**2).sum()),
        var_revenue=float((revenue**2 * (1 + cv2) / np.maximum(orders, 1e-12)).sum())
        + float((noise2 * revenue**2).sum()),
    )


def _log_var(w: _Window, kpi: str, sigma: float) -> tuple[float, float]:
    """(observations, variance of log KPI) of one window, from sampling noise only."""
    n = {"latency_p95": w.latency_n, "error_rate": w.errors}.get(kpi, w.orders)
    if n <= 0:
        return n, math.inf  # nothing observed: nothing can be told
    if kpi == "orders":
        return n, w.var_orders / w.orders**2
    if kpi == "revenue":
        return n, w.var_revenue / w.revenue**2
    if kpi == "conversion":
        return n, (1 - w.orders / w.sessions) / w.orders
    if kpi == "cart_value":
        return n, math.expm1(sigma**2) / w.orders
    if kpi == "latency_p95":
        phi = math.exp(-_Z95 * _Z95 / 2) / math.sqrt(2 * math.pi)
        return n, sigma**2 * _P95 * (1 - _P95) / phi**2 / n
    return n, 1.0 / n


def ground_truth(scenario: Scenario) -> list[TruthRecord]:
    """The true effect of every release on every KPI of the bundled catalog.

    Effects are computed from the same rate model as `generate` (no random draws), so derived KPIs
    are exact: a -8 % conversion effect is -8 % on orders and revenue and 0 on cart value; a
    regional release is diluted by that region's share of the post window's traffic.

    Args:
        scenario: the scenario.

    Returns:
        One record per (release, KPI), releases in ``scenario.releases`` order.
    """
    rels = releases(scenario)
    w = scenario.window_seconds
    svc_index = {s.name: i for i, s in enumerate(scenario.services)}
    out: list[TruthRecord] = []
    for idx, (plan, rel) in enumerate(zip(scenario.releases, rels, strict=True)):
        s = svc_index[plan.service]
        svc = scenario.services[s]
        t = plan.time
        # Only this service's releases up to the post window's end can move its KPIs there.
        active = [p for p in scenario.releases if p.service == plan.service and p.time < t + w]
        others = [p for p in active if p is not plan]
        post = _expected(scenario, s, t, t + w, active)
        post_without = _expected(scenario, s, t, t + w, others)
        baseline = _expected(scenario, s, t - w, t, active)
        calm_post = _expected(scenario, s, t, t + w, (), latency=False)
        calm_base = _expected(scenario, s, t - w, t, (), latency=False)
        overlaps = tuple(
            rels[j].id
            for j, p in enumerate(scenario.releases)
            if j != idx and p.service == plan.service and abs(p.time - t) < w
        )
        per_minute = calm_post.sessions / (w / 60.0)
        regime: Regime = "steady"
        if per_minute < 0.3 * svc.peak_sessions_per_minute:
            regime = "low"
        elif abs(calm_post.sessions / calm_base.sessions - 1) > 0.12:
            regime = "ramp"
        for kpi in TRUTH_KPIS:
            sigma = svc.latency_sigma if kpi == "latency_p95" else svc.cart_value_sigma
            n_b, v_b = _log_var(baseline, kpi, sigma)
            n_p, v_p = _log_var(post, kpi, sigma)
            effect = post.kpi(kpi) / post_without.kpi(kpi) - 1
            out.append(
                TruthRecord(
                    release_id=rel.id,
                    service=plan.service,
                    version=plan.version,
                    time=t,
                    kind=plan.kind,
                    label=plan.label,
                    scope=dict(plan.scope),
                    kpi=kpi,
                    effect=0.0 if abs(effect) < 1e-9 else effect,
                    overlaps=overlaps,
                    regime=regime,
                    naive_change=post.kpi(kpi) / baseline.kpi(kpi) - 1,
                    baseline_sessions=baseline.sessions,
                    post_sessions=post.sessions,
                    baseline_observations=n_b,
                    post_observations=n_p,
                    se=math.sqrt(v_b + v_p),
                )
            )
    return out


# --------------------------------------------------------------------------- presets


def _at(day_start: float, hhmm: str) -> float:
    h, m = hhmm.split(":")
    return day_start + int(h) * 3600.0 + int(m) * 60.0


def demo_scenario(
    seed: int = 7,
    *,
    start: float = DEMO_START,
    samples_per_minute: int = 1,
    order_events: bool = False,
) -> Scenario:
    """A shop of four services: a day of history, then a day of releases with a known story.

    Releases fall 26 to 35 hours after ``start`` (08:00-17:00 UTC on day two with the default
    Tuesday 06:00 start), so every window has a day-ago reference. They are: a good catalog
    release (cart value +7 %), a bad checkout release (conversion -8 %, so orders and revenue
    -8 %) with an incident linked to it and a rollback three hours later, neutral releases, a
    search feature-flag change (conversion +6 %), an overlapping payments pair (latency +12 %
    then a hotfix 25 minutes later) and an EU-only checkout release (cart value +5 % there).
    Work items flow through backlog -> dev -> review -> waiting-for-qa (the bottleneck) -> qa
    -> deploy.

    Args:
        seed: random seed.
        start: first event time (whole minute); releases keep their offsets from it.
        samples_per_minute: volume knob (see Scenario).
        order_events: per-order samples for orders, revenue and cart value.

    Returns:
        The scenario; its releases' ``label`` says bad/good/neutral/rollback/overlap/flag/canary.
    """
    day = start + 18 * 3600.0  # "midnight" of day two: release times below are offsets from it
    names = ("checkout", "catalog", "payments", "search")
    rel = [
        PlannedRelease(
            "catalog", _at(day, "08:00"), "3.2.0", "deployed", {"cart_value": 0.07}, label="good"
        ),
        PlannedRelease("payments", _at(day, "09:00"), "5.1.3", label="neutral"),
        PlannedRelease(
            "checkout", _at(day, "10:00"), "1.4.2", "deployed", {"conversion": -0.08}, label="bad"
        ),
        PlannedRelease("search", _at(day, "11:00"), "2.7.0", label="neutral"),
        PlannedRelease(
            "checkout",
            _at(day, "13:00"),
            "1.4.1",
            "rolledback",
            {"conversion": 1 / 0.92 - 1},
            label="rollback",
        ),
        PlannedRelease(
            "search",
            _at(day, "13:30"),
            "new-ranking=on@50%",
            "flag",
            {"conversion": 0.06},
            flag_key="new-ranking",
            rollout_percent=50.0,
            label="flag",
        ),
        PlannedRelease(
            "payments",
            _at(day, "14:00"),
            "5.2.0",
            "deployed",
            {"latency_ms": 0.12},
            label="overlap",
        ),
        PlannedRelease(
            "payments",
            _at(day, "14:25"),
            "5.2.1",
            "deployed",
            {"latency_ms": 1 / 1.12 - 1},
            label="overlap",
        ),
        PlannedRelease("catalog", _at(day, "15:30"), "3.2.1", label="neutral"),
        PlannedRelease(
            "checkout",
            _at(day, "16:00"),
            "1.5.0",
            "upgraded",
            {"cart_value": 0.05},
            {"region": "eu"},
            label="canary",
        ),
        PlannedRelease("search", _at(day, "17:00"), "2.7.1", label="neutral"),
    ]
    incident = PlannedIncident(
        "checkout",
        detected=_at(day, "10:35"),
        resolved=_at(day, "13:10"),
        release=2,
        description="checkout conversion drop after 1.4.2",
    )
    return Scenario(
        seed=seed,
        start=start,
        # Until the last release's 4 h horizon has closed (plus the allowed lateness).
        duration_seconds=_at(day, "21:10") - start,
        services=tuple(service_profile(n) for n in names),
        releases=tuple(rel),
        incidents=(incident,),
        workflow=WorkflowPlan(),
        samples_per_minute=samples_per_minute,
        order_events=order_events,
    )


def _bump(version: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    major, minor, patch = version
    return (major, minor + 1, 0) if rng.random() < 0.2 else (major, minor, patch + 1)


def accuracy_scenario(
    seed: int = 11,
    n_releases: int = 200,
    *,
    services: tuple[str, ...] = ("checkout", "catalog", "payments", "search"),
    start: float = ACCURACY_START,
    overlap_fraction: float = 0.08,
    traffic_scale: float = 1.0,
    samples_per_minute: int = 1,
) -> Scenario:
    """Many releases with effects drawn from {-10, -5, 0, +5, +10} % for measuring a judge.

    Releases start one day and 90 minutes after ``start`` (a day-ago reference exists for every
    window) and follow each other per service every 135-165 minutes, at all hours: some land on
    the morning ramp, some at night on thin traffic. A fraction comes as overlapping pairs
    (second release 15-45 minutes after the first). Each release moves one lever (conversion,
    cart value, latency, error rate or sessions) or nothing; ~10 % are regional, ~15 % flags.

    Args:
        seed: random seed (planning and samples).
        n_releases: how many releases.
        services: service names (see service_profile).
        start: first event time (whole minute).
        overlap_fraction: probability that a slot holds an overlapping pair.
        traffic_scale: multiplies every service's traffic (more traffic: more effects visible;
            the number of events does not change).
        samples_per_minute: volume knob (see Scenario).

    Returns:
        The scenario; ground_truth(scenario) tells what a judge should find.
    """
    rng = np.random.default_rng([seed, 3])
    levers = ("conversion", "cart_value", "latency_ms", "error_rate", "sessions")
    lever_p = np.array([0.35, 0.2, 0.2, 0.15, 0.1])
    first = start + DAY + 90 * 60.0
    next_t = {name: first + i * 37 * 60.0 for i, name in enumerate(services)}
    versions = {name: (1, int(rng.integers(0, 9)), 0) for name in services}
    plans: list[PlannedRelease] = []

    def draw(service: str, t: float) -> PlannedRelease:
        level = float(EFFECT_LEVELS[int(rng.integers(len(EFFECT_LEVELS)))])
        lev = levers[int(rng.choice(len(levers), p=lever_p))]
        effects = {lev: level} if level else {}
        up_is_good = lev in ("conversion", "cart_value", "sessions")
        label = "neutral" if level == 0 else ("good" if (level > 0) == up_is_good else "bad")
        scope = {"region": ("eu", "us")[int(rng.integers(2))]} if rng.random() < 0.1 else {}
        u = rng.random()
        if u < 0.15:
            pct = float((10, 25, 50, 100)[int(rng.integers(4))])
            flag = f"flag-{int(rng.integers(100)):02d}"
            return PlannedRelease(
                service, t, f"{flag}=on@{pct:g}%", "flag", effects, scope, flag, pct, label
            )
        previous = versions[service]
        versions[service] = _bump(previous, rng)
        kind: ReleaseKind = "deployed" if u < 0.85 else ("upgraded" if u < 0.95 else "rolledback")
        shown = previous if kind == "rolledback" else versions[service]
        return PlannedRelease(
            service, t, ".".join(map(str, shown)), kind, effects, scope, label=label
        )

    while len(plans) < n_releases:
        service = min(services, key=lambda n: (next_t[n], n))
        t = next_t[service]
        plans.append(draw(service, t))
        last = t
        if len(plans) < n_releases and rng.random() < overlap_fraction:
            last = t + int(rng.integers(15, 46)) * 60.0
            plans.append(draw(service, last))
        # >= 2 h between non-overlapping releases of a service: windows never share a release.
        next_t[service] = last + (150 + int(rng.integers(-15, 16))) * 60.0
    plans.sort(key=lambda p: (p.time, p.service))
    end = max(p.time for p in plans) + 2 * 3600.0
    return Scenario(
        seed=seed,
        start=start,
        duration_seconds=end - start,
        services=tuple(
            service_profile(n, service_profile(n).peak_sessions_per_minute * traffic_scale)
            for n in services
        ),
        releases=tuple(plans),
        samples_per_minute=samples_per_minute,
    )


def weekly_scenario(seed: int = 5, *, start: float = WEEKLY_START) -> Scenario:
    """Eight days of history with a traffic rise every Monday morning, then Monday releases.

    A neutral checkout release lands on the second Monday at 08:00 UTC (09:00 in the EU, on the
    Monday-specific ramp) and a bad catalog release (conversion -10 %) at 08:30. Only a
    week-ago reference explains the neutral release's traffic jump; a day-ago (Sunday) reference
    does not. Samples are per minute around the releases and their day- and week-ago windows,
    and one per 15 minutes elsewhere.

    Args:
        seed: random seed.
        start: first event time; the default is a Sunday midnight UTC.

    Returns:
        The scenario.
    """
    monday = start + 8 * DAY
    rel = (
        PlannedRelease("checkout", monday + 8 * 3600.0, "2.3.0", label="neutral"),
        PlannedRelease(
            "catalog",
            monday + 8.5 * 3600.0,
            "4.1.0",
            "deployed",
            {"conversion": -0.10},
            label="bad",
        ),
    )
    return Scenario(
        seed=seed,
        start=start,
        duration_seconds=monday + 13 * 3600.0 - start,
        services=(service_profile("checkout"), service_profile("catalog")),
        releases=rel,
        monday_boost=0.3,
        coarse_seconds=900.0,
    )
