"""DORA software-delivery metrics per service, in event time, from releases, incidents and verdicts.

The four metrics follow DORA's published definitions (https://dora.dev/guides/dora-metrics-four-keys/),
computed per service over the period ``(now - period, now]``:

- **Deployment frequency**: how often changes are deployed to production, as production
  deployments per day. A deployment is a ``deployed`` or ``upgraded`` release to a production
  environment; rollbacks (a remediation) and feature-flag changes are not counted.
- **Change lead time**: the time from a change's first commit to its successful deployment to
  production, for each change first deployed in the period. The first-commit time is the earliest
  CDEvents change event of the change (``change created``, carrying its commit shas); a deployment
  links to changes through the commit shas and change ids it carries, the CDEvents chain it
  belongs to (``context.chainId``: the first change seen in that chain) and the change events its
  ``context.links`` point to. A change is counted once, at its first production deployment;
  deployments with no known change have no lead time.
- **Change fail rate**: the share of the period's deployments that caused a failure in production
  needing remediation. A deployment failed when (a) an incident is linked to it, (b) it was rolled
  back, or (c) — valueloop's addition — a ``degraded`` final impact verdict was published for it on
  a critical KPI. Each deployment is counted once however many causes it has; every cause is
  reported.
- **Failed deployment recovery time**: for each failed deployment of the period, the time from the
  deployment to its recovery: the resolution of its linked incident(s) (the last one, when several)
  when the failure is incident-linked, else the earliest of a rollback of it and the next production
  deployment of the service that did not fail itself. Failures not yet recovered at ``now`` are
  counted as unrecovered, not given a time.

- **Deployment rework rate** (DORA's fifth metric, 2024: "the ratio of deployments that are
  unplanned but happen as a result of an incident in production",
  https://dora.dev/guides/dora-metrics/): the share of the period's production deployments and
  rollbacks that were rework. A rollback is always rework; a deployment is rework when it comes
  within ``rework_window`` (default 24 h) after a production failure of the same service began:
  an incident of the service was detected, or a deployment of the service that got a
  ``degraded`` final verdict on a critical KPI went out (the fix-forward).

Each metric also gets a DORA performance level (`level_of`): elite, high, medium or low, from the
2023 Accelerate State of DevOps Report's software delivery performance clusters (see
`LEVEL_THRESHOLDS`). Rework rate has no level: DORA has published no bands for it yet.

Incidents link to the deployment that caused them by, in order: the incident's explicit deployment
id (when that deployment is known); the artifact it names (``subject.content.artifactId``: the
latest deployment of the service, at or before the incident, of the purl's version or the digest);
a change id it shares with a production deployment of the same
service (the latest such deployment at or before the incident); and only then by time: the latest
production deployment of the service at most ``incident_link_max_gap`` (default 24 h) before the
incident. Never beyond the gap: "the latest earlier deployment" alone blames days-old deployments
(incubator-devlake#8150). An incident is linked at its first detected/reported time (its resolution
time when that is all that is known).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stream_app.core.flow import Distribution
from stream_app.core.types import VerdictRecord
from stream_app.core.valuestream import ValueStreamDef
from stream_app.events import artifact_version
from stream_app.events.model import Incident, Release, WorkflowEvent

Cause = Literal["incident", "rollback", "degraded-kpi"]
CAUSES: tuple[Cause, ...] = ("incident", "rollback", "degraded-kpi")
LinkKind = Literal["explicit", "artifact", "change", "time"]
ReleaseOutcome = Literal["deployment", "rollback", "release", "not-production", "duplicate"]
IncidentOutcome = Literal["accepted", "not-production", "duplicate", "too-many-events"]
VerdictOutcome = Literal["accepted", "interim", "stale"]
STATE_VERSION = 1
MAX_EVENTS_PER_INCIDENT = 100


# Prefixes keep chain and event ids apart from commit shas and change ids in the alias tables.
_CHAIN = "chain:"
_EVENT = "event:"


def _chain_refs(r: Release) -> list[str]:
    """The chain and linked events a deployment carries, as alias-table references."""
    refs = [_EVENT + cid for cid in r.links]
    if r.chain_id:
        refs.append(_CHAIN + r.chain_id)
    return refs


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """What the tracker knows of any release (deployment, rollback or flag change)."""

    id: str
    service: str
    version: str
    time: float
    kind: str
    environment: str


@dataclass(frozen=True, slots=True)
class KpiOutcome:
    """The latest final verdict of one KPI for a release."""

    kpi: str
    verdict: str
    change: float | None  # relative change (0.05 = +5 %)
    critical: bool
    revision: int
    ci_low: float | None = None  # the change's 95 % interval
    ci_high: float | None = None
    # The baseline level in business units a day (see `core.ledger.daily_level`) and its unit.
    daily_level: float | None = None
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class DeploymentFailure:
    """A deployment counted as failed, why, and how it recovered."""

    deployment_id: str
    service: str
    version: str
    time: float
    causes: tuple[Cause, ...]  # in CAUSES order
    incident_ids: tuple[str, ...]
    rollback_ids: tuple[str, ...]
    degraded_kpis: tuple[str, ...]  # critical KPIs with a degraded final verdict
    recovered_at: float | None
    recovery_seconds: float | None


@dataclass(frozen=True, slots=True)
class IncidentLink:
    """Which deployment an incident was blamed on, and by which rule (None: not linked)."""

    incident_id: str
    service: str
    time: float
    deployment_id: str | None
    link: LinkKind | None
    resolved_at: float | None


@dataclass(frozen=True, slots=True)
class DoraReport:
    """DORA metrics of one service over ``(period_start, period_end]``."""

    service: str
    period_start: float
    period_end: float
    deployments: int
    deployment_frequency_per_day: float
    lead_time: Distribution | None
    changes: int  # changes with a lead time in the period
    failed_deployments: int
    failures_by_cause: dict[str, int]  # each cause once per failed deployment
    change_failure_rate: float | None  # None without deployments
    recovery_time: Distribution | None
    unrecovered: int
    failures: tuple[DeploymentFailure, ...]
    incidents: tuple[IncidentLink, ...]  # incidents of the period and their links
    deployments_total: int  # cumulative since the tracker started (counter)
    failures_total_by_cause: dict[str, int]  # cumulative (counter)
    rollbacks: int = 0  # production rollbacks in the period
    rework_deployments: int = 0  # rollbacks + deployments within the window after a failure
    rework_rate: float | None = None  # rework / (deployments + rollbacks); None without any


@dataclass(slots=True)
class _Incident:
    incident_id: str
    service: str
    deployment_id: str | None = None
    change_ids: list[str] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # time, action, event id


@dataclass(slots=True)
class _Analysis:
    causes: dict[str, set[str]]
    incidents_of: dict[str, list[str]]
    rollbacks_of: dict[str, list[str]]
    degraded_of: dict[str, list[str]]
    links: dict[str, tuple[str | None, LinkKind | None]]


class DoraTracker:
    """Keeps production deployments, rollbacks, incidents, change first-commit times and verdicts.

    Feed it events in any order; ``report(now, period)`` computes the metrics as of ``now`` (events
    after ``now`` are ignored). It never reads the clock.
    """

    def __init__(
        self,
        definition: ValueStreamDef | None = None,
        *,
        incident_link_max_gap_seconds: float | None = None,
        retention_seconds: float | None = None,
        production_environments: tuple[str, ...] | None = None,
        rework_window_seconds: float = 86400.0,
    ) -> None:
        self.rework_window = rework_window_seconds
        d = definition
        self.max_gap = (
            incident_link_max_gap_seconds
            if incident_link_max_gap_seconds is not None
            else (d.incident_link_max_gap_seconds if d else 86400.0)
        )
        self.retention = (
            retention_seconds
            if retention_seconds is not None
            else (d.retention_seconds if d else 90 * 86400.0)
        )
        self.production = (
            production_environments
            if production_environments is not None
            else (d.production_environments if d else ("production",))
        )
        self._reset()

    def _reset(self) -> None:
        self._releases: dict[str, ReleaseInfo] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}  # deployment id -> commits + change ids
        self._by_service: dict[str, list[tuple[float, str]]] = {}  # sorted production deployments
        self._rollbacks: dict[str, list[tuple[float, str]]] = {}  # per service, sorted
        self._incidents: dict[str, _Incident] = {}
        self._change_first: dict[str, dict[str, float]] = {}  # service -> change -> first time
        self._change_alias: dict[str, dict[str, str]] = {}  # service -> sha / change id -> change
        self._work_proxy: set[str] = set()  # changes whose first time is a work item's start
        self._verdicts: dict[str, dict[str, KpiOutcome]] = {}  # release id -> kpi -> final verdict
        self._verdict_meta: dict[str, tuple[str, str, float]] = {}  # release -> service, ver, time
        self._deploys_total: dict[str, int] = {}
        self._pruned_failures: dict[str, dict[str, int]] = {}
        self._dirty: set[str] = set()  # services whose stored state changed (see `dirty`)

    # ---- input

    def on_release(self, r: Release) -> ReleaseOutcome:
        """Record a release; production deployments and rollbacks feed DORA, every one the ledger.

        Returns:
            "deployment", "rollback", "release" (a flag change), "not-production" or "duplicate".
        """
        if r.id in self._releases:
            return "duplicate"
        self._dirty.add(r.service)
        self._releases[r.id] = ReleaseInfo(
            r.id, r.service, r.version, r.time, r.kind, r.environment
        )
        if r.environment not in self.production:
            return "not-production"
        if r.kind == "rolledback":
            bisect.insort(self._rollbacks.setdefault(r.service, []), (r.time, r.id))
            return "rollback"
        if r.kind == "flag":
            return "release"
        self._aliases[r.id] = tuple(dict.fromkeys((*r.commits, *r.change_ids, *_chain_refs(r))))
        bisect.insort(self._by_service.setdefault(r.service, []), (r.time, r.id))
        self._deploys_total[r.service] = self._deploys_total.get(r.service, 0) + 1
        return "deployment"

    def on_incident(self, i: Incident) -> IncidentOutcome:
        """Record an incident event (detected, reported or resolved); production ones only."""
        if i.environment not in self.production:
            return "not-production"
        self._dirty.add(i.service)
        inc = self._incidents.get(i.incident_id)
        if inc is None:
            inc = self._incidents[i.incident_id] = _Incident(i.incident_id, i.service)
        if any(e[2] == i.id for e in inc.events):
            return "duplicate"
        if len(inc.events) >= MAX_EVENTS_PER_INCIDENT:
            return "too-many-events"
        bisect.insort(inc.events, (i.time, i.action, i.id))
        if i.deployment_id and inc.deployment_id is None:
            inc.deployment_id = i.deployment_id
        for c in i.change_ids:
            if c not in inc.change_ids:
                inc.change_ids.append(c)
        return "accepted"

    def on_verdict(
        self, rec: VerdictRecord, level: tuple[float, str] | None = None
    ) -> VerdictOutcome:
        """Record an impact verdict; only the latest revision of final verdicts counts.

        Args:
            rec: the verdict.
            level: the KPI's baseline level in business units a day, and its unit, when known.
        """
        if rec.phase != "final":
            return "interim"
        per_kpi = self._verdicts.setdefault(rec.release_id, {})
        old = per_kpi.get(rec.kpi)
        if old is not None and old.revision >= rec.revision:
            return "stale"
        j = rec.judgement
        self._dirty.add(rec.service)
        per_kpi[rec.kpi] = KpiOutcome(
            rec.kpi,
            j.verdict,
            j.change,
            rec.critical,
            rec.revision,
            j.ci_low,
            j.ci_high,
            None if level is None else level[0],
            None if level is None else level[1],
        )
        self._verdict_meta[rec.release_id] = (rec.service, rec.version, rec.release_time)
        return "accepted"

    def on_workflow(self, ev: WorkflowEvent) -> bool:
        """Record the first-commit time of a change from its CDEvents change events.

        When a change has no CDEvents change event, the time its work item first entered an
        active stage (e.g. dev) stands in for the first commit; a change event replaces it.

        Returns:
            Whether the event set or may set a first-commit time.
        """
        proxy = ev.source_type == "workitem" and ev.action == "entered" and ev.state == "active"
        if ev.source_type != "change" and not proxy:
            return False
        self._dirty.add(ev.service)
        firsts = self._change_first.setdefault(ev.service, {})
        aliases = self._change_alias.setdefault(ev.service, {})
        # A commit already known under another change id (e.g. the work item) keeps that change.
        key = aliases.get(ev.item_id, ev.item_id)
        if proxy:
            if key in firsts and key not in self._work_proxy:
                return False  # a real change event already gave the first commit
            self._work_proxy.add(key)
        elif key in self._work_proxy:
            self._work_proxy.discard(key)
            firsts.pop(key, None)
        firsts[key] = min(firsts.get(key, ev.time), ev.time)
        # A deployment reaches the change by a commit, the change id, the chain the change
        # started (context chainId) or a link to the change event's context id.
        refs = [ev.item_id, *ev.commits, _EVENT + ev.id]
        if ev.chain_id:
            refs.append(_CHAIN + ev.chain_id)
        for a in refs:
            aliases.setdefault(a, key)
        return True

    # ---- queries

    def release_info(self, release_id: str) -> ReleaseInfo | None:
        """What is known of a release, from its event or else from its verdicts."""
        info = self._releases.get(release_id)
        if info is None and release_id in self._verdict_meta:
            service, version, time = self._verdict_meta[release_id]
            info = ReleaseInfo(release_id, service, version, time, "deployed", "production")
        return info

    def final_verdicts(self, release_id: str) -> tuple[KpiOutcome, ...]:
        """The latest final verdict of each KPI of a release, by KPI name."""
        return tuple(v for _, v in sorted(self._verdicts.get(release_id, {}).items()))

    def prune(self, now: float) -> None:
        """Forget deployments, rollbacks, incidents, changes and verdicts older than the retention.

        The failures of forgotten deployments stay in the cumulative failure counts.
        """
        cutoff = now - self.retention
        old = [rid for rid, info in self._releases.items() if info.time < cutoff]
        self._dirty.update(self._releases[rid].service for rid in old)
        analysis = self._analyse(now) if any(rid in self._aliases for rid in old) else None
        for rid in old:
            info = self._releases.pop(rid)
            if rid in self._aliases and analysis is not None:
                per = self._pruned_failures.setdefault(info.service, {})
                for c in analysis.causes.get(rid, ()):
                    per[c] = per.get(c, 0) + 1
                del self._aliases[rid]
            self._verdicts.pop(rid, None)
            self._verdict_meta.pop(rid, None)
        for table in (self._by_service, self._rollbacks):
            for service in list(table):
                table[service] = [x for x in table[service] if x[0] >= cutoff]
                if not table[service]:
                    del table[service]
        for iid in [
            iid
            for iid, inc in self._incidents.items()
            if max((e[0] for e in inc.events), default=cutoff - 1) < cutoff
        ]:
            del self._incidents[iid]
        for service, firsts in self._change_first.items():
            gone = {k for k, t in firsts.items() if t < cutoff}
            for k in gone:
                del firsts[k]
            aliases = self._change_alias[service]
            for a in [a for a, k in aliases.items() if k in gone]:
                del aliases[a]
        for rid in [r for r, (_, _, t) in self._verdict_meta.items() if t < cutoff]:
            self._verdicts.pop(rid, None)
            del self._verdict_meta[rid]

    def report(self, now: float, period_seconds: float) -> dict[str, DoraReport]:
        """DORA metrics per service over ``(now - period_seconds, now]``, as of ``now``.

        Also forgets what is older than the retention (see ``prune``), which never changes a report
        whose period is shorter than the retention.

        Args:
            now: the event time the report is for.
            period_seconds: length of the period (e.g. 30 days).

        Returns:
            Service -> report, for every service with deployments, incidents or counts.
        """
        self.prune(now)
        a = self._analyse(now)
        start = now - period_seconds
        services = sorted(
            set(self._by_service)
            | set(self._deploys_total)
            | {inc.service for inc in self._incidents.values()}
        )
        out: dict[str, DoraReport] = {}
        for service in services:
            deps = [
                rid for t, rid in self._by_service.get(service, []) if start < t <= now
            ]  # in time order
            lead: list[float] = []
            first_deploy = self._first_deploys(service, now)
            for rid in deps:
                t = self._releases[rid].time
                for change in self._changes_of(rid):
                    if first_deploy.get(change) == rid:
                        first = self._change_first[service][change]
                        if t >= first:
                            lead.append(t - first)
            failures = [self._failure(rid, a, now) for rid in deps if a.causes.get(rid)]
            by_cause: dict[str, int] = {
                c: sum(1 for f in failures if c in f.causes) for c in CAUSES
            }
            recoveries = [f.recovery_seconds for f in failures if f.recovery_seconds is not None]
            totals: dict[str, int] = dict.fromkeys(CAUSES, 0)
            for c, n in self._pruned_failures.get(service, {}).items():
                totals[c] = totals.get(c, 0) + n
            for _, rid in self._by_service.get(service, []):
                if self._releases[rid].time <= now:
                    for c in a.causes.get(rid, ()):
                        totals[c] += 1
            incidents = []
            for inc in sorted(self._incidents.values(), key=lambda x: x.incident_id):
                when = self._incident_time(inc, now)
                if inc.service == service and when is not None and start < when <= now:
                    dep, how = a.links.get(inc.incident_id, (None, None))
                    incidents.append(
                        IncidentLink(
                            inc.incident_id, service, when, dep, how, self._resolved_at(inc, now)
                        )
                    )
            rollbacks = [t for t, _ in self._rollbacks.get(service, []) if start < t <= now]
            rework = self._rework(service, deps, a, now)
            moves = len(deps) + len(rollbacks)
            out[service] = DoraReport(
                service=service,
                period_start=start,
                period_end=now,
                deployments=len(deps),
                deployment_frequency_per_day=(
                    len(deps) / (period_seconds / 86400.0) if period_seconds > 0 else 0.0
                ),
                lead_time=Distribution.of(lead),
                changes=len(lead),
                failed_deployments=len(failures),
                failures_by_cause=by_cause,
                change_failure_rate=len(failures) / len(deps) if deps else None,
                recovery_time=Distribution.of(recoveries),
                unrecovered=sum(1 for f in failures if f.recovered_at is None),
                failures=tuple(failures),
                incidents=tuple(incidents),
                deployments_total=self._deploys_total.get(service, 0),
                failures_total_by_cause=totals,
                rollbacks=len(rollbacks),
                rework_deployments=rework + len(rollbacks),
                rework_rate=(rework + len(rollbacks)) / moves if moves else None,
            )
        return out

    def _rework(self, service: str, deps: list[str], a: _Analysis, now: float) -> int:
        """How many of ``deps`` came within the rework window after a failure of the service."""
        starts = sorted(
            [
                t
                for inc in self._incidents.values()
                if inc.service == service and (t := self._incident_time(inc, now)) is not None
            ]
            + [
                self._releases[rid].time
                for _, rid in self._by_service.get(service, [])
                if "degraded-kpi" in a.causes.get(rid, ())
            ]
        )
        n = 0
        for rid in deps:
            t = self._releases[rid].time
            i = bisect.bisect_left(starts, t)  # failures strictly before the deployment
            if i > 0 and t - starts[i - 1] <= self.rework_window:
                n += 1
        return n

    def change_lead_times(self, now: float) -> list[tuple[str, str, str, float]]:
        """Every retained change first deployed to production at or before ``now``.

        Args:
            now: the event time to look from.

        Returns:
            (service, change, deployment id, lead time in seconds), in deployment time order.
        """
        out: list[tuple[float, str, str, str, float]] = []
        for service in sorted(self._by_service):
            firsts = self._change_first.get(service, {})
            for change, rid in self._first_deploys(service, now).items():
                t = self._releases[rid].time
                first = firsts.get(change)
                if first is not None and t >= first:
                    out.append((t, service, change, rid, t - first))
        out.sort()
        return [(service, change, rid, lead) for _, service, change, rid, lead in out]

    # ---- state

    def dirty(self) -> set[str]:
        """Services whose part of the state changed since the last `clear_dirty`."""
        return set(self._dirty)

    def clear_dirty(self) -> None:
        """Forget which services changed (after the caller stored their state)."""
        self._dirty.clear()

    def _service_of(self, release_id: str) -> str | None:
        info = self._releases.get(release_id)
        if info is not None:
            return info.service
        meta = self._verdict_meta.get(release_id)
        return None if meta is None else meta[0]

    def snapshot_state(self, services: Collection[str] | None = None) -> bytes:
        """The tracker's state as bytes (orjson), for a faust table or a file.

        Args:
            services: only these services' part (their releases, incidents, changes, verdicts
                and counts); None for the whole state.
        """

        def mine(service: str | None) -> bool:
            return services is None or service in services

        def per_service(table: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in table.items() if mine(k)}

        change_first = per_service(self._change_first)
        doc = {
            "v": STATE_VERSION,
            "releases": [
                [i.id, i.service, i.version, i.time, i.kind, i.environment]
                for i in self._releases.values()
                if mine(i.service)
            ],
            "aliases": {k: v for k, v in self._aliases.items() if mine(self._service_of(k))},
            "by_service": per_service(self._by_service),
            "rollbacks": per_service(self._rollbacks),
            "incidents": [
                [i.incident_id, i.service, i.deployment_id, i.change_ids, i.events]
                for i in self._incidents.values()
                if mine(i.service)
            ],
            "change_first": change_first,
            "change_alias": per_service(self._change_alias),
            "work_proxy": sorted(
                k
                for k in self._work_proxy
                if services is None or any(k in firsts for firsts in change_first.values())
            ),
            "verdicts": {
                rid: [
                    [
                        v.kpi,
                        v.verdict,
                        v.change,
                        v.critical,
                        v.revision,
                        v.ci_low,
                        v.ci_high,
                        v.daily_level,
                        v.unit,
                    ]
                    for v in per.values()
                ]
                for rid, per in self._verdicts.items()
                if mine(self._service_of(rid))
            },
            "verdict_meta": {k: v for k, v in self._verdict_meta.items() if mine(v[0])},
            "deploys_total": per_service(self._deploys_total),
            "pruned_failures": per_service(self._pruned_failures),
        }
        return orjson.dumps(doc)

    def restore_state(self, data: bytes, *, merge: bool = False) -> None:
        """Replace the tracker's state with one from ``snapshot_state``.

        Args:
            data: the snapshot.
            merge: add it to the current state instead (the part of services this tracker holds
                nothing of, e.g. a `snapshot_state(services)` after `forget_services(services)`).

        Raises:
            ValueError: the bytes are not a state of this version.
        """
        doc: dict[str, Any] = orjson.loads(data)
        if doc.get("v") != STATE_VERSION:
            raise ValueError(f"dora state version {doc.get('v')!r}, expected {STATE_VERSION}")
        if not merge:
            self._reset()
        self._releases.update({r[0]: ReleaseInfo(*r) for r in doc["releases"]})
        self._aliases.update({k: tuple(v) for k, v in doc["aliases"].items()})
        self._by_service.update({k: [(t, r) for t, r in v] for k, v in doc["by_service"].items()})
        self._rollbacks.update({k: [(t, r) for t, r in v] for k, v in doc["rollbacks"].items()})
        self._incidents.update(
            {
                iid: _Incident(iid, svc, dep, list(ch), [(t, a, e) for t, a, e in evs])
                for iid, svc, dep, ch, evs in doc["incidents"]
            }
        )
        self._change_first.update(doc["change_first"])
        self._change_alias.update(doc["change_alias"])
        self._work_proxy.update(doc.get("work_proxy", ()))
        self._verdicts.update(
            {rid: {v[0]: KpiOutcome(*v) for v in per} for rid, per in doc["verdicts"].items()}
        )
        self._verdict_meta.update({k: (v[0], v[1], v[2]) for k, v in doc["verdict_meta"].items()})
        self._deploys_total.update(doc["deploys_total"])
        self._pruned_failures.update(doc["pruned_failures"])

    def forget_services(self, services: Collection[str]) -> None:
        """Drop the part of the state these services own (their partition moved elsewhere)."""
        gone = set(services)
        rids = {rid for rid, info in self._releases.items() if info.service in gone}
        rids |= {rid for rid, meta in self._verdict_meta.items() if meta[0] in gone}
        for rid in rids:
            self._releases.pop(rid, None)
            self._aliases.pop(rid, None)
            self._verdicts.pop(rid, None)
            self._verdict_meta.pop(rid, None)
        for table in (
            self._by_service,
            self._rollbacks,
            self._change_alias,
            self._deploys_total,
            self._pruned_failures,
        ):
            for service in gone:
                table.pop(service, None)
        for service in gone:
            self._work_proxy -= set(self._change_first.pop(service, {}))
        for iid in [iid for iid, inc in self._incidents.items() if inc.service in gone]:
            del self._incidents[iid]
        self._dirty -= gone

    # ---- internals

    def _changes_of(self, deployment_id: str) -> list[str]:
        service = self._releases[deployment_id].service
        aliases = self._change_alias.get(service, {})
        return list(dict.fromkeys(aliases[a] for a in self._aliases[deployment_id] if a in aliases))

    def _first_deploys(self, service: str, now: float) -> dict[str, str]:
        """Change -> the deployment that first took it to production (up to ``now``)."""
        first: dict[str, str] = {}
        for t, rid in self._by_service.get(service, []):
            if t > now:
                break
            for change in self._changes_of(rid):
                first.setdefault(change, rid)
        return first

    @staticmethod
    def _incident_time(inc: _Incident, now: float) -> float | None:
        opened = [t for t, action, _ in inc.events if action != "resolved" and t <= now]
        if opened:
            return opened[0]
        resolved = [t for t, _, _ in inc.events if t <= now]
        return resolved[0] if resolved else None

    @staticmethod
    def _resolved_at(inc: _Incident, now: float) -> float | None:
        """When the incident was (last) resolved, or None when it is open at ``now``."""
        resolved_at: float | None = None
        for t, action, _ in inc.events:
            if t > now:
                break
            # A detection after a resolution reopens the incident.
            resolved_at = t if action == "resolved" else None
        return resolved_at

    def _link(self, inc: _Incident, when: float, now: float) -> tuple[str | None, LinkKind | None]:
        explicit = inc.deployment_id
        if (
            explicit is not None
            and explicit in self._aliases
            and self._releases[explicit].time <= now
        ):
            return explicit, "explicit"
        deps = self._by_service.get(inc.service, [])
        i = bisect.bisect_right(deps, (when, "\U0010ffff"))
        # The artifact it names (a purl's version, or a digest): the latest deployment of that
        # version of the service at or before the incident, before any guess by time.
        version = artifact_version(explicit) if explicit is not None else None
        if version is not None:
            for _, rid in reversed(deps[:i]):
                if self._releases[rid].version == version:
                    return rid, "artifact"
        if inc.change_ids:
            wanted = set(inc.change_ids)
            for _, rid in reversed(deps[:i]):
                if wanted.intersection(self._aliases[rid]):
                    return rid, "change"
        if i > 0:
            t, rid = deps[i - 1]
            if when - t <= self.max_gap:
                return rid, "time"
        return None, None

    def _analyse(self, now: float) -> _Analysis:
        a = _Analysis({}, {}, {}, {}, {})
        for inc in sorted(self._incidents.values(), key=lambda x: x.incident_id):
            when = self._incident_time(inc, now)
            if when is None:
                continue
            dep, how = self._link(inc, when, now)
            a.links[inc.incident_id] = (dep, how)
            if dep is not None:
                a.causes.setdefault(dep, set()).add("incident")
                a.incidents_of.setdefault(dep, []).append(inc.incident_id)
        for service, rollbacks in self._rollbacks.items():
            deps = self._by_service.get(service, [])
            for t, rb in rollbacks:
                if t > now:
                    break
                target = self._rolled_back(deps, t, self._releases[rb].version)
                if target is not None:
                    a.causes.setdefault(target, set()).add("rollback")
                    a.rollbacks_of.setdefault(target, []).append(rb)
        for rid, per in self._verdicts.items():
            if rid not in self._aliases or self._releases[rid].time > now:
                continue
            bad = sorted(k for k, v in per.items() if v.critical and v.verdict == "degraded")
            if bad:
                a.causes.setdefault(rid, set()).add("degraded-kpi")
                a.degraded_of[rid] = bad
        return a

    def _rolled_back(self, deps: list[tuple[float, str]], t: float, version: str) -> str | None:
        # The deployment undone: the latest one before the rollback that is not the version the
        # service was rolled back to.
        for _, rid in reversed(deps[: bisect.bisect_left(deps, (t, ""))]):
            if self._releases[rid].version != version:
                return rid
        return None

    def _failure(self, rid: str, a: _Analysis, now: float) -> DeploymentFailure:
        info = self._releases[rid]
        causes = tuple(c for c in CAUSES if c in a.causes[rid])
        incidents = tuple(a.incidents_of.get(rid, ()))
        rollbacks = tuple(a.rollbacks_of.get(rid, ()))
        recovered: float | None = None
        if incidents:
            # Recovered when every incident it caused is resolved.
            times = [self._resolved_at(self._incidents[i], now) for i in incidents]
            if all(t is not None for t in times):
                recovered = max(t for t in times if t is not None)
        else:
            candidates = [self._releases[rb].time for rb in rollbacks]
            for t, nxt in self._by_service.get(info.service, []):
                if info.time < t <= now and nxt != rid and not a.causes.get(nxt):
                    candidates.append(t)
                    break
            if candidates:
                recovered = min(candidates)
        return DeploymentFailure(
            deployment_id=rid,
            service=info.service,
            version=info.version,
            time=info.time,
            causes=causes,
            incident_ids=incidents,
            rollback_ids=rollbacks,
            degraded_kpis=tuple(a.degraded_of.get(rid, ())),
            recovered_at=recovered,
            recovery_seconds=None if recovered is None else max(0.0, recovered - info.time),
        )


Level = Literal["elite", "high", "medium", "low"]
LEVELS: tuple[Level, ...] = ("elite", "high", "medium", "low")
HOUR, DAY_S, WEEK, MONTH = 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0
# DORA performance levels: the 2023 Accelerate State of DevOps Report's software delivery
# performance clusters (https://dora.dev/research/2023/dora-report/), elite / high / medium:
#   deployment frequency  on demand (>= 1 a day) / daily to weekly / weekly to monthly
#   change lead time      < 1 day / 1 day to 1 week / 1 week to 1 month
#   change failure rate   5 % / 10 % / 15 %
#   recovery time         < 1 hour / < 1 day / 1 day to 1 week
# and low beyond medium. The report gives cluster ranges, not cut-offs, and its low cluster
# overlaps medium on two metrics; the boundaries below close the gaps as Apache DevLake's DORA
# benchmarks do (https://devlake.apache.org/docs/Metrics/): the medium bound is the last one.
LEVEL_THRESHOLDS: dict[str, tuple[float, float, float]] = {
    # metric: (elite bound, high bound, medium bound); see `level_of` for the direction.
    "deployment_frequency": (1.0, 1.0 / 7.0, 1.0 / 30.0),  # per day, at least
    "lead_time": (DAY_S, WEEK, MONTH),  # seconds (p50), less than / at most
    "change_failure_rate": (0.05, 0.10, 0.15),  # share, at most
    "recovery_time": (HOUR, DAY_S, WEEK),  # seconds (p50), less than / at most
}


def level_of(metric: str, value: float | None) -> Level | None:
    """A DORA metric's performance level (see `LEVEL_THRESHOLDS`); None without a value.

    Deployment frequency is elite at 1 a day or more, high at 1 a week or more, medium at 1 a
    month or more. Lead time and recovery time are elite below their first bound, high and
    medium up to their second and third. Change failure rate is elite up to 5 %, high up to 10 %,
    medium up to 15 %. Everything else is low.
    """
    if value is None:
        return None
    elite, high, medium = LEVEL_THRESHOLDS[metric]
    if metric == "deployment_frequency":
        ok = [value >= elite, value >= high, value >= medium]
    elif metric == "change_failure_rate":
        ok = [value <= elite, value <= high, value <= medium]
    else:
        ok = [value < elite, value <= high, value <= medium]
    return next((lvl for lvl, good in zip(LEVELS, ok, strict=False) if good), "low")


def dora_levels(r: DoraReport) -> dict[str, Level | None]:
    """The performance level of each of a report's metrics (None: no value in the period)."""
    return {
        "deployment_frequency": level_of("deployment_frequency", r.deployment_frequency_per_day),
        "lead_time": level_of("lead_time", None if r.lead_time is None else r.lead_time.p50),
        "change_failure_rate": level_of("change_failure_rate", r.change_failure_rate),
        "recovery_time": level_of(
            "recovery_time", None if r.recovery_time is None else r.recovery_time.p50
        ),
    }


def dora_metric_samples(
    reports: dict[str, DoraReport],
) -> list[tuple[str, dict[str, str], float]]:
    """The Prometheus samples of DORA reports, as (metric name, labels, value).

    Gauges are the complete set for this moment: a label set absent here has no value now (the
    edge should remove it). The ``_total`` samples are cumulative: the edge increments its counters
    by the increase since its last export.

    Args:
        reports: service -> report, from ``DoraTracker.report``.

    Returns:
        The samples, in a stable order.
    """
    out: list[tuple[str, dict[str, str], float]] = []
    for service, r in sorted(reports.items()):
        out.append(
            ("valueloop_deployments_total", {"service": service}, float(r.deployments_total))
        )
        for cause in CAUSES:
            out.append(
                (
                    "valueloop_deployment_failures_total",
                    {"service": service, "cause": cause},
                    float(r.failures_total_by_cause.get(cause, 0)),
                )
            )
        if r.lead_time is not None:
            for q, v in r.lead_time.percentiles().items():
                out.append(
                    ("valueloop_lead_time_seconds", {"service": service, "percentile": q}, v)
                )
        if r.change_failure_rate is not None:
            out.append(
                ("valueloop_change_failure_ratio", {"service": service}, r.change_failure_rate)
            )
        if r.rework_rate is not None:
            out.append(("valueloop_deployment_rework_ratio", {"service": service}, r.rework_rate))
        if r.recovery_time is not None:
            for q, v in r.recovery_time.percentiles().items():
                out.append(
                    ("valueloop_recovery_time_seconds", {"service": service, "percentile": q}, v)
                )
    return out
