"""The input guard: sanity and cardinality checks an event passes before it may touch state.

`Guard.check` runs before the pipeline routes an event to the impact engine, flow and DORA
trackers. It returns None (go on) or a bounded reason (the event is dead-lettered with it):

- ``time-in-past``: the event time is before `Limits.min_event_time` (default 2000-01-01), a
  deterministic floor that catches zero or garbage timestamps.
- ``time-in-future``: more than `Limits.max_future_seconds` ahead of ``now``. The core never reads
  the clock: the edge (worker, ``valueloop replay``) passes ``now``; without it the check is off.
  A single sample dated next year would otherwise move its service's watermark a year ahead and
  make every later sample "late".
- ``unknown-service``: `Limits.known_services` is set and does not name the service.
- ``out-of-scope`` / ``unknown-stream``: a sample of a service no KPI applies to, or of a stream no
  KPI of the service reads (checked here so that no engine state is created for such a service).
- ``too-many-services``: the service is new and `Limits.max_services` services are admitted.
- ``too-many-kpis``: the sample stream is new for its service and the service already has
  `Limits.max_kpis_per_service` streams.
- ``duplicate``: a sample whose ``id`` was already accepted for its service (a producer retry).

Label values per KPI are bounded where they become state: the bucket store keeps at most
`Catalog.max_label_values` values of a scope label per stream (``too-many-label-values``);
`Limits.max_label_values`, when set, overrides the catalog's number. Other labels create no state.

Admission is first come, first served, and never forgotten (like the engine's per-service state).
A service whose state is stored (the worker's changelog table) is admitted again after a restart
even when the limit is reached (`Guard.stored`), so a restart never turns away a service that was
admitted before it. Sample ids are remembered from their first sight until their bucket can no
longer take samples (the engine's watermark minus the widest bucket): a retry older than that is
``late`` in the engine anyway, so memory stays proportional to the sample rate times the allowed
lateness (and at most `Limits.max_ids_per_service` per service). Samples without an ``id`` cannot
be told from a retry: producers that retry should set one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import orjson

from stream_app.core.catalog import Catalog
from stream_app.events.model import Incident, KpiSample, Release, WorkflowEvent

GuardReason = Literal[
    "time-in-past",
    "time-in-future",
    "unknown-service",
    "out-of-scope",
    "unknown-stream",
    "too-many-services",
    "too-many-kpis",
    "duplicate",
]
GUARD_REASONS: tuple[GuardReason, ...] = get_args(GuardReason)
MIN_EVENT_TIME = 946684800.0  # 2000-01-01T00:00:00Z
Event = Release | KpiSample | WorkflowEvent | Incident


@dataclass(frozen=True, slots=True)
class Limits:
    """What the guard lets in (the worker builds it from Settings: ``Settings.guard_limits``).

    Attributes:
        max_services: distinct services admitted (state and metric series).
        max_kpis_per_service: distinct sample streams accepted per service.
        max_label_values: values of one scope label kept per stream of a service; None: the
            catalog's ``[scope] max_values``.
        known_services: when set, only these services are admitted.
        min_event_time: events before this (POSIX seconds) are refused.
        max_future_seconds: events more than this ahead of ``now`` are refused.
        max_ids_per_service: sample ids remembered per service for de-duplication.
    """

    max_services: int = 1000
    max_kpis_per_service: int = 64
    max_label_values: int | None = None
    known_services: frozenset[str] | None = None
    min_event_time: float = MIN_EVENT_TIME
    max_future_seconds: float = 86400.0
    max_ids_per_service: int = 100_000

    def __post_init__(self) -> None:
        if self.max_services < 1 or self.max_kpis_per_service < 1 or self.max_ids_per_service < 1:
            raise ValueError("guard limits must be at least 1")
        if self.max_label_values is not None and self.max_label_values < 1:
            raise ValueError("max_label_values must be at least 1")
        if not self.max_future_seconds >= 0:
            raise ValueError("max_future_seconds must be >= 0")


@dataclass(slots=True)
class _Service:
    streams: frozenset[str]  # streams some KPI of the service reads
    kpis: set[str] = field(default_factory=set)
    ids: dict[str, float] = field(default_factory=dict)  # accepted sample id -> event time
    order: deque[tuple[float, str]] = field(default_factory=deque)  # (time, id) by arrival


class Guard:
    """Admission state: services, their sample streams, and recently seen sample ids.

    Pure: no clock, no I/O. ``watermark`` (the engine's, per service) tells which ids may be
    forgotten. ``stored`` may be set by the edge to a predicate telling whether a service has
    stored state: such a service is admitted whatever the limit, as it was before a restart.
    """

    def __init__(
        self,
        catalog: Catalog,
        limits: Limits | None = None,
        watermark: Callable[[str], float] | None = None,
    ) -> None:
        self.catalog = catalog
        self.limits = limits or Limits()
        self.watermark = watermark
        self.stored: Callable[[str], bool] | None = None
        self._services: dict[str, _Service] = {}
        self._min_time = self.limits.min_event_time
        self._ahead = self.limits.max_future_seconds
        # Retries older than the watermark minus the widest bucket are late in the engine anyway.
        self._id_margin = max((k.bucket_seconds for k in catalog.kpis), default=0.0)
        self._products = catalog.has_product_kpis()

    def __len__(self) -> int:
        return len(self._services)

    def admitted(self, service: str) -> bool:
        """Whether `service` is admitted."""
        return service in self._services

    def check(self, event: Event, now: float | None = None) -> GuardReason | None:
        """Why `event` must not reach the core, or None; admits its service and stream if new.

        A sample id that passes is remembered at once, so a retry later in the same batch is a
        ``duplicate`` too (a retry of a sample the engine then refused is refused as well: it
        is counted once, as zero times).

        Args:
            event: a decoded event.
            now: the edge's wall clock (POSIX seconds); None skips the future-time check.
        """
        # The hot path (an admitted service's sample): a few lookups, no calls.
        t = event.time
        if t < self._min_time:
            return "time-in-past"
        if now is not None and t > now + self._ahead:
            return "time-in-future"
        key = event.service
        if self._products and type(event) is KpiSample:
            key = self.catalog.subject_of(event)  # a product-level sample: its product's state
        svc = self._services.get(key)
        if svc is None:
            reason = self._admit(event, key)
            if reason is not None:
                return reason
            svc = self._services[key]
        if type(event) is KpiSample:
            kpi = event.kpi
            if kpi not in svc.kpis:
                if kpi not in svc.streams:
                    return "unknown-stream" if svc.streams else "out-of-scope"
                if len(svc.kpis) >= self.limits.max_kpis_per_service:
                    return "too-many-kpis"
                svc.kpis.add(kpi)
            sample_id = event.id
            if sample_id is not None:
                if sample_id in svc.ids:
                    return "duplicate"
                self._remember(svc, key, sample_id, t)
        return None

    def _admit(self, event: Event, service: str) -> GuardReason | None:
        """Admit the (new) state `service` of `event` (its service's or product's), or say why
        not."""
        lim = self.limits
        if lim.known_services is not None and event.service not in lim.known_services:
            return "unknown-service"
        streams = self._streams_of(service)
        if type(event) is KpiSample:
            # Checked before admission: junk streams must not take a service's room.
            if not streams:
                return "out-of-scope"
            if event.kpi not in streams:
                return "unknown-stream"
        if len(self._services) >= lim.max_services and not (
            self.stored is not None and self.stored(service)
        ):
            return "too-many-services"
        self._services[service] = _Service(streams)
        return None

    def _streams_of(self, service: str) -> frozenset[str]:
        return frozenset(s for k in self.catalog.for_service(service) for s in k.streams())

    def _remember(self, svc: _Service, service: str, sample_id: str, t: float) -> None:
        wm = self.watermark(service) if self.watermark is not None else -math.inf
        horizon = wm - self._id_margin
        order, ids = svc.order, svc.ids
        cap = self.limits.max_ids_per_service
        # Samples come roughly in time order: forget from the oldest arrival. One that came
        # out of order waits behind a newer one (at most the lateness longer; the cap holds).
        while order and (order[0][0] < horizon or len(ids) >= cap):
            old_t, old = order.popleft()
            if ids.get(old) == old_t:
                del ids[old]
        if t >= horizon:  # else the engine finds it late, and any retry of it too
            ids[sample_id] = t
            order.append((t, sample_id))

    def forget(self, service: str) -> None:
        """Drop `service` (its partition moved to another worker): its room is free again."""
        self._services.pop(service, None)

    # -- persistence (stored with the engine's snapshot of the service) -------------------------

    def snapshot(self, service: str) -> bytes:
        """The service's admission state (streams seen, remembered ids) as bytes."""
        svc = self._services.get(service)
        if svc is None:
            return b""
        ids = sorted(svc.ids.items(), key=lambda kv: (kv[1], kv[0]))
        return orjson.dumps({"v": 1, "kpis": sorted(svc.kpis), "ids": ids})

    def restore(self, service: str, data: bytes = b"") -> None:
        """Admit `service` (its state was stored) and merge its `snapshot`, when there is one.

        Raises:
            ValueError: `data` is not a guard snapshot.
        """
        svc = self._services.get(service)
        if svc is None:
            svc = self._services[service] = _Service(self._streams_of(service))
        if not data:
            return
        meta = orjson.loads(data)
        if not isinstance(meta, dict) or meta.get("v") != 1:
            raise ValueError("not a guard snapshot (format v1)")
        svc.kpis.update(str(k) for k in meta["kpis"] if k in svc.streams)
        restored = [
            (float(t), str(sample_id))
            for sample_id, t in meta["ids"]
            if isinstance(t, int | float) and math.isfinite(t) and sample_id not in svc.ids
        ]
        svc.order = deque(sorted([*restored, *svc.order]))
        svc.ids.update((sample_id, t) for t, sample_id in restored)
