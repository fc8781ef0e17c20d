"""The Prometheus metric set of the worker, built against an injected registry."""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from stream_app.core.types import VerdictRecord

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "add_process_collectors"]

# Work waits hours to weeks: 5 minutes to 90 days, roughly doubling.
DURATION_BUCKETS: tuple[float, ...] = tuple(
    m * 60.0 for m in (5, 15, 30, 60, 120, 240, 480, 720, 1440, 2880, 4320, 7200, 10080, 20160)
) + tuple(d * 86400.0 for d in (30, 60, 90))

# The *_created series double the exposition for no dashboard or alert use.
disable_created_metrics()


def add_process_collectors(registry: CollectorRegistry) -> None:
    """Register prometheus_client's standard ``process_*`` and ``python_info`` collectors.

    The default registry has them; an injected one does not. Registering twice on the same
    registry is a no-op (the names are already there).
    """
    # A registry (auto_describe off) does not refuse a second ProcessCollector: look for one.
    present = {type(c) for c in getattr(registry, "_collector_to_names", {})}
    if ProcessCollector not in present:
        ProcessCollector(registry=registry)
    if PlatformCollector not in present:
        PlatformCollector(registry=registry)


class Metrics:
    """Every series valueloop exports. Labels are bounded; superseded release series are removed."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, max_services: int | None = None
    ) -> None:
        """Build the metric set.

        Args:
            registry: where to register (a fresh one when None).
            max_services: at most this many distinct services (and, apart, value streams) get
                series; updates for more are dropped and counted (the pipeline's guard refuses
                their input first: this is the last line). None: no limit.
        """
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.max_services = max_services
        self._owners: dict[str, set[str]] = {"service": set(), "value_stream": set()}
        self.series_refused = Counter(
            "valueloop_series_refused_total",
            "Metric updates dropped because their service or value stream is over the limit.",
            registry=r,
        )
        self.events_accepted = Counter(
            "valueloop_events_accepted_total",
            "Input messages decoded and accepted, by input topic role.",
            ["topic"],
            registry=r,
        )
        self.events_rejected = Counter(
            "valueloop_events_rejected_total",
            "Input messages sent to the dead-letter topic, by input topic role and reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.replayed_skipped = Counter(
            "valueloop_events_replayed_total",
            "Input events skipped because the restored state already holds their effect"
            " (re-delivered after a crash or a rebalance).",
            registry=r,
        )
        self.stale_skipped = Counter(
            "valueloop_events_stale_total",
            "Input events fetched before a rebalance and still buffered after it: neither"
            " applied nor acked; read again from the committed offset.",
            registry=r,
        )
        self.otlp_points = Counter(
            "valueloop_otlp_points_total",
            "OTLP data points by what became of them (converted, first, reset, baseline, stale,"
            " unmapped, unsupported, no-value, non-finite).",
            ["outcome"],
            registry=r,
        )
        self.samples = Counter(
            "valueloop_samples_total",
            "KPI samples by what the bucket store did with them (accepted, late, ...).",
            ["outcome"],
            registry=r,
        )
        self.verdicts = Counter(
            "valueloop_verdicts_total",
            "Impact verdicts published, by product, service, KPI, verdict and phase.",
            ["product", "service", "kpi", "verdict", "phase"],
            registry=r,
        )
        self.release_change = Gauge(
            "valueloop_release_change_ratio",
            "Relative KPI change after the service's latest judged release (0.05 = +5 %).",
            ["product", "service", "kpi"],
            registry=r,
        )
        self.release_change_low = Gauge(
            "valueloop_release_change_ci_low_ratio",
            "Lower bound of the confidence interval of the relative change.",
            ["product", "service", "kpi"],
            registry=r,
        )
        self.release_change_high = Gauge(
            "valueloop_release_change_ci_high_ratio",
            "Upper bound of the confidence interval of the relative change.",
            ["product", "service", "kpi"],
            registry=r,
        )
        self.release_degraded = Gauge(
            "valueloop_release_degraded",
            "1 when the service's latest judged release degraded this KPI, else 0.",
            ["product", "service", "kpi", "critical", "phase"],
            registry=r,
        )
        self.release_verdict = Gauge(
            "valueloop_release_verdict",
            "1 for the current verdict of the service's latest judged release on this KPI.",
            ["product", "service", "kpi", "verdict"],
            registry=r,
        )
        self.release_info = Gauge(
            "valueloop_release_info",
            "1 for the latest judged release of a service; the version label changes with it.",
            ["service", "version"],
            registry=r,
        )
        self.release_time = Gauge(
            "valueloop_release_timestamp_seconds",
            "Event time of the latest release of a service (for release markers).",
            ["service"],
            registry=r,
        )
        self.watermark = Gauge(
            "valueloop_watermark_timestamp_seconds",
            "Event-time watermark of the service (max event time seen minus allowed lateness).",
            ["service"],
            registry=r,
        )
        self.deadletter_sent = Counter(
            "valueloop_deadletter_messages_total",
            "Messages written to the dead-letter topic.",
            registry=r,
        )
        self.deadletter_truncated = Counter(
            "valueloop_deadletter_truncated_total",
            "Dead letters sent as a truncated copy (with the original's size and SHA-256) because"
            " the original was too large to re-produce.",
            registry=r,
        )
        self.state_snapshots = Counter(
            "valueloop_state_snapshots_total",
            "Service snapshots written to the changelog-backed state table.",
            registry=r,
        )
        self.state_flushed = Gauge(
            "valueloop_state_flushed_timestamp_seconds",
            "Wall-clock time of the last state flush: engine state is in the changelog as of then.",
            registry=r,
        )
        self.state_restored = Counter(
            "valueloop_state_restored_services_total",
            "Services whose engine state was restored from the changelog-backed table.",
            registry=r,
        )
        self.ready = Gauge(
            "valueloop_ready",
            "1 when the worker is connected and consuming.",
            registry=r,
        )
        # Flow metrics per value stream (service or product); percentile label in {0.5, 0.85}.
        self.flow_time = Gauge(
            "valueloop_flow_time_seconds",
            "Flow time of finished work items (start to production), by percentile (0.5, 0.85).",
            ["value_stream", "percentile"],
            registry=r,
        )
        self.stage_active = Gauge(
            "valueloop_stage_active_seconds",
            "Active (worked-on) time per item in a stage, by percentile (0.5, 0.85).",
            ["value_stream", "stage", "percentile"],
            registry=r,
        )
        self.stage_wait = Gauge(
            "valueloop_stage_wait_seconds",
            "Waiting time per item in a stage, by percentile (0.5, 0.85).",
            ["value_stream", "stage", "percentile"],
            registry=r,
        )
        self.flow_efficiency = Gauge(
            "valueloop_flow_efficiency_ratio",
            "Active time / total flow time of finished items over the period.",
            ["value_stream"],
            registry=r,
        )
        self.flow_load = Gauge(
            "valueloop_flow_load_items",
            "Work in progress: items currently in a stage.",
            ["value_stream", "stage"],
            registry=r,
        )
        self.flow_finished = Counter(
            "valueloop_flow_items_finished_total",
            "Work items that reached production (flow velocity is its rate), by item type.",
            ["value_stream", "item_type"],
            registry=r,
        )
        self.flow_distribution = Gauge(
            "valueloop_flow_distribution_ratio",
            "Share of finished items by type (feature, defect, risk, debt) over the period.",
            ["value_stream", "item_type"],
            registry=r,
        )
        self.bottleneck = Gauge(
            "valueloop_bottleneck_stage",
            "1 for the stage holding the largest share of waiting time of the value stream.",
            ["value_stream", "stage"],
            registry=r,
        )
        self.bottleneck_wait_share = Gauge(
            "valueloop_bottleneck_wait_share_ratio",
            "Share of all waiting time spent in the bottleneck stage.",
            ["value_stream"],
            registry=r,
        )
        # DORA, per service.
        self.deployments = Counter(
            "valueloop_deployments_total",
            "Production deployments (deployment frequency is its rate).",
            ["service"],
            registry=r,
        )
        self.deployment_failures = Counter(
            "valueloop_deployment_failures_total",
            "Deployments counted as failed, by cause (incident, rollback, degraded-kpi).",
            ["service", "cause"],
            registry=r,
        )
        self.lead_time = Gauge(
            "valueloop_lead_time_seconds",
            "Lead time for changes (first commit to production), by percentile (0.5, 0.85).",
            ["service", "percentile"],
            registry=r,
        )
        self.change_failure = Gauge(
            "valueloop_change_failure_ratio",
            "Change failure rate over the period: failed deployments / deployments.",
            ["service"],
            registry=r,
        )
        self.rework = Gauge(
            "valueloop_deployment_rework_ratio",
            "Deployment rework rate over the period: rollbacks and deployments within the rework"
            " window after a production failure / deployments and rollbacks.",
            ["service"],
            registry=r,
        )
        self.recovery_time = Gauge(
            "valueloop_recovery_time_seconds",
            "Failed-deployment recovery time, by percentile (0.5, 0.85).",
            ["service", "percentile"],
            registry=r,
        )
        # Histograms, observed once per finished item / stage visit / first-deployed change.
        self.item_flow_time = Histogram(
            "valueloop_item_flow_time_seconds",
            "Flow time of each finished work item (first flow stage to production).",
            ["value_stream", "item_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.item_stage_active = Histogram(
            "valueloop_item_stage_active_seconds",
            "Active time of each finished item in each stage it visited.",
            ["value_stream", "stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.item_stage_wait = Histogram(
            "valueloop_item_stage_wait_seconds",
            "Waiting time of each finished item in each stage it visited.",
            ["value_stream", "stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.change_lead_time = Histogram(
            "valueloop_change_lead_time_seconds",
            "Lead time of each change (first commit to its first production deployment).",
            ["service"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._histograms: dict[str, Histogram] = {
            h._name: h
            for h in (
                self.item_flow_time,
                self.item_stage_active,
                self.item_stage_wait,
                self.change_lead_time,
            )
        }
        # Value ledger, per service and bet outcome (met, ..., "undeclared").
        self.ledger_releases = Gauge(
            "valueloop_ledger_releases",
            "Releases of the period with final verdicts or declared benefits, by bet outcome.",
            ["service", "outcome"],
            registry=r,
        )
        self.ledger_cost = Gauge(
            "valueloop_ledger_cost_seconds",
            "Active engineering time of those releases' work items, by bet outcome.",
            ["service", "outcome"],
            registry=r,
        )
        self.ledger_delivered = Gauge(
            "valueloop_ledger_delivered_per_day",
            "Delivered value a day of those releases' headline KPI (baseline level x change), in"
            " the KPI's business unit (unit: orders, revenue, ...), by bet outcome.",
            ["service", "outcome", "unit"],
            registry=r,
        )
        self.ledger_published = Counter(
            "valueloop_ledger_entries_total",
            "Value-ledger entries published to the ledger topic, by kind (release, item).",
            ["kind"],
            registry=r,
        )
        # Worker health.
        self.consumer_lag = Gauge(
            "valueloop_consumer_lag_messages",
            "Messages of the worker's input partitions not processed yet (committed offset to"
            " the end of the partition), by input topic role.",
            ["topic"],
            registry=r,
        )
        self.intake_stalled = Gauge(
            "valueloop_intake_stalled",
            "Input partitions, by input topic role, whose processing made no progress for"
            " VALUELOOP_STALL_SECONDS while they had lag (/health answers 503 while any does).",
            ["topic"],
            registry=r,
        )
        self.intake_since_progress = Gauge(
            "valueloop_intake_seconds_since_progress",
            "Longest time, over the input partitions of a topic role that have lag, since their"
            " committed offset last moved (0 when none has lag).",
            ["topic"],
            registry=r,
        )
        self._by_name: dict[str, Counter | Gauge] = {}
        for m in (
            self.flow_time,
            self.stage_active,
            self.stage_wait,
            self.flow_efficiency,
            self.flow_load,
            self.flow_distribution,
            self.bottleneck,
            self.bottleneck_wait_share,
            self.lead_time,
            self.change_failure,
            self.rework,
            self.recovery_time,
            self.ledger_releases,
            self.ledger_cost,
            self.ledger_delivered,
        ):
            self._by_name[m._name] = m
        for c in (self.flow_finished, self.deployments, self.deployment_failures):
            self._by_name[c._name + "_total"] = c
        self._report_gauges = [n for n, m in self._by_name.items() if isinstance(m, Gauge)]
        self._gauge_keys: dict[str, set[tuple[str, ...]]] = {}
        self._exported: dict[tuple[str, tuple[str, ...]], float] = {}
        self._current_version: dict[str, str] = {}
        self._current_release: dict[tuple[str, str], str] = {}
        self._release_times: dict[tuple[str, str], float] = {}

    @property
    def report_names(self) -> frozenset[str]:
        """Names of the series `apply_samples` sets (flow, DORA and ledger report figures)."""
        return frozenset(self._by_name)

    def apply_samples(self, samples: list[tuple[str, dict[str, str], float]]) -> None:
        """Set report samples (flow, DORA) from the core.

        Gauges receive the complete set for this moment: label sets that disappeared are removed.
        ``_total`` samples are cumulative values: their counters grow by the increase.
        """
        seen: dict[str, set[tuple[str, ...]]] = {}
        for name, labels, value in samples:
            metric = self._by_name.get(name)
            if metric is None or not self._owned(labels):
                continue
            key = tuple(labels[n] for n in metric._labelnames)
            if isinstance(metric, Counter):
                prev = self._exported.get((name, key), 0.0)
                # Created at zero too: a series present at 0 lets rate() see its first increase.
                child = metric.labels(*key)
                if value > prev:
                    child.inc(value - prev)
                    self._exported[(name, key)] = value
            else:
                metric.labels(*key).set(value)
                seen.setdefault(name, set()).add(key)
        for name in self._report_gauges:
            current = seen.get(name, set())
            for key in self._gauge_keys.get(name, set()) - current:
                with contextlib.suppress(KeyError):
                    self._by_name[name].remove(*key)
            self._gauge_keys[name] = current

    def observe_samples(self, observations: list[tuple[str, dict[str, str], float]]) -> None:
        """Observe histogram values from the core (``Pipeline.drain_observations``)."""
        for name, labels, value in observations:
            h = self._histograms.get(name)
            if h is not None and self._owned(labels):
                h.labels(*(labels[n] for n in h._labelnames)).observe(value)

    def admits(self, name: str, label: str = "service") -> bool:
        """Whether series labelled ``label=name`` may exist (`max_services` distinct names)."""
        owners = self._owners[label]
        if name in owners:
            return True
        if self.max_services is not None and len(owners) >= self.max_services:
            self.series_refused.inc()
            return False
        owners.add(name)
        return True

    def _owned(self, labels: dict[str, str]) -> bool:
        for label in ("service", "value_stream"):
            name = labels.get(label)
            if name is not None and not self.admits(name, label):
                return False
        return True

    def accepted(self, role: str, n: int = 1) -> None:
        """Count accepted input messages."""
        self.events_accepted.labels(role).inc(n)

    def rejected(self, role: str, reason: str) -> None:
        """Count a dead-lettered input message."""
        self.events_rejected.labels(role, reason).inc()
        self.deadletter_sent.inc()

    def observe_verdict(self, rec: VerdictRecord) -> None:
        """Update the per-(service, KPI) series from a verdict; superseded series are removed."""
        if not self.admits(rec.service):
            return
        j = rec.judgement
        # The product is the service's (one per service): the label adds no series of its own.
        product = rec.product or rec.service
        self.verdicts.labels(product, rec.service, rec.kpi, j.verdict, rec.phase).inc()
        key = (rec.service, rec.kpi)
        current = self._current_release.get(key)
        # A verdict of an older release arriving late must not overwrite the newer one.
        if (
            current is not None
            and current != rec.release_id
            and rec.release_time < self._release_times.get(key, float("-inf"))
        ):
            return
        self._current_release[key] = rec.release_id
        self._release_times[key] = rec.release_time
        crit = "true" if rec.critical else "false"
        for phase in ("interim", "final"):
            self.release_degraded.labels(product, rec.service, rec.kpi, crit, phase).set(
                1.0 if (phase == rec.phase and j.verdict == "degraded") else 0.0
            )
        for v in ("improved", "degraded", "neutral", "inconclusive", "confounded"):
            self.release_verdict.labels(product, rec.service, rec.kpi, v).set(
                1.0 if v == j.verdict else 0.0
            )
        if j.change is not None:
            self.release_change.labels(product, rec.service, rec.kpi).set(j.change)
        if j.ci_low is not None and j.ci_high is not None:
            self.release_change_low.labels(product, rec.service, rec.kpi).set(j.ci_low)
            self.release_change_high.labels(product, rec.service, rec.kpi).set(j.ci_high)
        self.observe_release(rec.service, rec.version, rec.release_time)

    def observe_release(self, service: str, version: str, time: float) -> None:
        """Point the service's release series at its latest release, removing the superseded one."""
        if not self.admits(service):
            return
        old = self._current_version.get(service)
        if old is not None and old != version:
            with contextlib.suppress(KeyError):
                self.release_info.remove(service, old)
        self._current_version[service] = version
        self.release_info.labels(service, version).set(1.0)
        self.release_time.labels(service).set(time)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
