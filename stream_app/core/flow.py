"""Flow metrics of value streams: flow time, stage times, efficiency, load and bottleneck.

Definitions (per value stream, over finished items whose finish falls in the period ``(now - period,
now]``):

- An item is in at most one stage at a time, either active (worked on) or waiting; the definition
  file says which stages exist, their order and their default state
  (stream_app/data/valuestream.toml).
- Time between leaving a stage and entering the next is waiting time of the next stage (the queue in
  front of it); time between leaving the last stage and the production release is waiting time of
  the definition's ``release_stage``.
- Flow time: from the start of the item's first time in a flow stage (the stages from
  ``start_stage`` on, waits in front of them included) to production: the first production release
  carrying one of its commit shas / change ids, or entering a done stage. The backlog before it is
  reported per stage but is not flow time.
- Flow efficiency: total active time in flow stages / total flow time (a ratio of sums, not a mean
  of per-item ratios).
- Flow load: items in each stage at ``now`` (an item between stages counts in the next stage).
- Flow velocity: items finished in the period. Flow distribution: their share by item type.
- Bottleneck: the flow stage holding the largest share of the period's waiting time, with the
  per-item wait there (p50, p85).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stream_app.core.valuestream import StageKind, ValueStreamDef
from stream_app.events.model import Release, WorkflowEvent

QUANTILES: tuple[float, ...] = (0.5, 0.85)
ITEM_TYPES: tuple[str, ...] = ("feature", "defect", "risk", "debt")
STATE_VERSION = 2

WorkflowOutcome = Literal[
    "accepted",  # the event moved (or confirmed) an item
    "dropped",  # the item was abandoned and forgotten
    "duplicate",  # this event id was already applied to the item
    "no-rule",  # no rule of the definition matches the event's source/action
    "unknown-stage",  # the event names a stage the definition does not have
    "pending",  # a CI event of no known item yet: kept a while until an item claims it
    "unlinked",  # an event to drop an item that is not known
    "after-finish",  # the item already reached production before this event's time
    "too-many-open-items",  # the value stream is at its open-item cap
    "too-many-events",  # the item is at its event cap
]
MarkKind = Literal["enter", "leave", "done", "link"]
# At equal times, leave one stage before entering another.
_KIND_RANK = {"leave": 0, "enter": 1, "done": 2, "link": 3}


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile of already sorted values, interpolating linearly between closest ranks.

    Args:
        sorted_values: values in ascending order, at least one.
        q: the quantile in [0, 1].

    Returns:
        The quantile (numpy's default "linear" method).
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("quantile of no values")
    pos = (n - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Distribution:
    """A distribution of durations (seconds): count, total and the reported quantiles."""

    count: int
    total: float
    p50: float
    p85: float

    @staticmethod
    def of(values: Iterable[float]) -> Distribution | None:
        """The distribution of ``values``, or None when there are none."""
        vs = sorted(values)
        if not vs:
            return None
        return Distribution(len(vs), math.fsum(vs), quantile(vs, 0.5), quantile(vs, 0.85))

    def percentiles(self) -> dict[str, float]:
        """Percentile label value ("0.5", "0.85") -> value, as exported to Prometheus."""
        return {"0.5": self.p50, "0.85": self.p85}


@dataclass(frozen=True, slots=True)
class StageReport:
    """One stage of a value stream over the period."""

    stage: str
    kind: StageKind
    in_flow: bool  # False for stages before the flow start (the backlog)
    items: int  # finished items of the period that passed through the stage
    active: Distribution | None  # per-item active time in the stage
    wait: Distribution | None  # per-item waiting time in the stage
    active_seconds: float
    wait_seconds: float
    wait_share: float | None  # share of all flow waiting time (None for pre-flow stages)
    load: int  # items in the stage at `now` (work in progress)


@dataclass(frozen=True, slots=True)
class Bottleneck:
    """The stage holding the largest share of waiting time, and how long items wait there."""

    stage: str
    wait_share: float
    wait_seconds: float
    wait: Distribution


@dataclass(frozen=True, slots=True)
class FlowReport:
    """Flow metrics of one value stream over ``(period_start, period_end]``."""

    value_stream: str
    period_start: float
    period_end: float
    finished: int  # flow velocity: items finished in the period
    velocity_per_day: float
    flow_time: Distribution | None
    flow_seconds: float  # total flow time of the finished items
    active_seconds: float  # of which active, in flow stages
    wait_seconds: float  # of which waiting in flow stages
    efficiency: float | None  # active_seconds / flow_seconds
    stages: tuple[StageReport, ...]
    finished_by_type: dict[str, int]
    distribution: dict[str, float]  # share of finished items by type
    bottleneck: Bottleneck | None
    open_items: int  # work in progress over all stages at `now`
    finished_total_by_type: dict[str, int]  # cumulative since the tracker started (counter)


@dataclass(frozen=True, slots=True)
class WorkCost:
    """What items cost: their number, active time, waiting time and flow time (seconds)."""

    items: int = 0
    item_ids: tuple[str, ...] = ()
    active_seconds: float = 0.0
    wait_seconds: float = 0.0
    flow_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ItemTimes:
    """Where one finished item spent its time: per stage active and waiting seconds, flow time."""

    value_stream: str
    item_id: str
    item_type: str
    finished_at: float
    flow_seconds: float | None  # None when the item never entered a flow stage
    active: dict[str, float]  # stage -> active seconds, for every stage it visited
    wait: dict[str, float]  # stage -> waiting seconds, for every stage it visited


@dataclass(slots=True)
class _Mark:
    time: float
    kind: MarkKind
    stage: str  # "" for done
    state: str  # active | waiting; "" for leave/done
    event_id: str


@dataclass(slots=True)
class _Summary:
    end: float
    flow_start: float | None
    active: dict[str, float]
    wait: dict[str, float]
    visited: list[str]


@dataclass(slots=True)
class _Walk:
    segs: list[tuple[str, str, float, float]] = field(default_factory=list)  # stage, state, t0, t1
    cur: tuple[str, str] | None = None  # (stage, state) the item is in
    since: float = 0.0  # when it entered cur
    gap_since: float | None = None  # when it left its last stage, while between stages
    last_left: str | None = None


@dataclass(slots=True)
class _Item:
    stream: str
    item_id: str
    # The service whose event opened the item: its state is stored with that service's.
    service: str = ""
    item_type: str | None = None
    # Which event's item type wins: work-item events first, then the latest (order-independent).
    type_key: tuple[int, float, str] = (-1, 0.0, "")
    # Ids of the work-item (0) and change (1) events applied to it: the smallest names the item,
    # so its id does not depend on which event arrived first.
    ids: dict[str, int] = field(default_factory=dict)
    marks: list[_Mark] = field(default_factory=list)
    event_ids: set[str] = field(default_factory=set)
    aliases: list[str] = field(default_factory=list)
    releases: dict[str, float] = field(default_factory=dict)
    last_time: float = float("-inf")
    counted: bool = False
    finished_at: float | None = None
    finished_by: str | None = None
    cache: _Summary | None = None


class FlowTracker:
    """Follows work items through the stages of their value streams, in event time.

    Feed it workflow events and releases in any order; ask for a snapshot at any event time. It
    never reads the clock. Memory is bounded by the definition's retention and caps.
    """

    def __init__(self, definition: ValueStreamDef) -> None:
        self.defn = definition
        self._order = {s.name: i for i, s in enumerate(definition.stages)}
        self._reset()

    def _reset(self) -> None:
        self._items: dict[str, dict[str, _Item]] = {}
        self._alias: dict[str, dict[str, list[str]]] = {}
        # Production releases by alias, so an item whose events arrive after its release still
        # finishes at the release time.
        self._released: dict[str, dict[str, dict[str, float]]] = {}
        # release id -> (stream, time, service)
        self._releases: dict[str, tuple[str, float, str]] = {}
        self._open: dict[str, int] = {}
        # stream -> service (of the item) -> item type -> items finished, ever (a counter)
        self._finished_total: dict[str, dict[str, dict[str, int]]] = {}
        self._dirty: set[str] = set()  # services whose stored state changed (see `dirty`)
        # CI events that arrived before the item that owns their commits: event id -> event, and
        # alias (run id, commit) -> event ids.
        self._pending: dict[str, dict[str, WorkflowEvent]] = {}
        self._pending_index: dict[str, dict[str, list[str]]] = {}
        self._fresh: list[tuple[str, str]] = []  # aliases added since the last drain

    # ---- input

    def on_workflow(self, ev: WorkflowEvent) -> WorkflowOutcome:
        """Apply one workflow event.

        Args:
            ev: the event; its ``service`` is mapped to a value stream by the definition.

        Returns:
            What happened, as a bounded outcome (see ``WorkflowOutcome``).
        """
        stream = self.defn.stream_of(ev.service)
        mark = self._mark_for(ev)
        if isinstance(mark, str):
            return mark
        outcome = self._ingest(stream, ev, mark)
        self._drain()
        return outcome

    def on_release(self, r: Release) -> tuple[str, ...]:
        """Apply a release: a production deployment finishes the items whose commits it carries.

        Args:
            r: the release. Only deployments and upgrades to a production environment count;
                rollbacks and flag changes do not finish work.

        Returns:
            The ids of the items this release finished (possibly none).
        """
        d = self.defn
        if r.kind not in ("deployed", "upgraded") or r.environment not in d.production_environments:
            return ()
        if r.id in self._releases:
            return ()
        stream = d.stream_of(r.service)
        self._releases[r.id] = (stream, r.time, r.service)
        self._dirty.add(r.service)
        released = self._released.setdefault(stream, {})
        keys: list[str] = []
        amap = self._alias.get(stream, {})
        for a in dict.fromkeys((*r.commits, *r.change_ids)):
            released.setdefault(a, {})[r.id] = r.time
            keys.extend(amap.get(a, ()))
        keys = sorted(set(keys))
        items = self._items.get(stream, {})
        for k in keys:
            it = items.get(k)
            if it is not None:
                it.releases[r.id] = r.time
                self._refresh(it)
        return tuple(k for k in keys if k in items and items[k].finished_by == r.id)

    def prune(self, now: float) -> int:
        """Forget finished items older than the retention, and open items idle that long.

        Args:
            now: the current event time.

        Returns:
            How many items were forgotten.
        """
        cutoff = now - self.defn.retention_seconds
        gone = 0
        for items in self._items.values():
            for key in [
                k
                for k, it in items.items()
                if (it.finished_at is not None and it.finished_at < cutoff)
                or (it.finished_at is None and it.last_time < cutoff)
            ]:
                self._remove(items[key])
                gone += 1
        for released in self._released.values():
            for a in list(released):
                kept = {rid: t for rid, t in released[a].items() if t >= cutoff}
                if kept:
                    released[a] = kept
                else:
                    del released[a]
        self._releases = {rid: v for rid, v in self._releases.items() if v[1] >= cutoff}
        stale = now - self.defn.pending_seconds
        for stream, pending in self._pending.items():
            for eid in [eid for eid, ev in pending.items() if ev.time < stale]:
                self._unpark(stream, eid)
        return gone

    # ---- output

    def snapshot(self, now: float, period_seconds: float) -> dict[str, FlowReport]:
        """Flow metrics per value stream over the period ``(now - period_seconds, now]``.

        Also forgets what is older than the retention (see ``prune``); that never changes a report
        whose period is shorter than the retention.

        Args:
            now: the event time the report is for.
            period_seconds: length of the period (e.g. 30 days).

        Returns:
            Value stream -> report, for every value stream with items.
        """
        self.prune(now)
        return {
            stream: self._report(stream, now, period_seconds)
            for stream in sorted(set(self._items) | set(self._finished_total))
        }

    def release_cost(self, release_id: str) -> WorkCost:
        """The cost of the items a production release finished (zero when none is linked)."""
        info = self._releases.get(release_id)
        if info is None:
            return WorkCost()
        items = sorted(
            (it for it in self._items.get(info[0], {}).values() if it.finished_by == release_id),
            key=lambda it: it.item_id,
        )
        return self._cost(items)

    def item_cost(self, value_stream: str, item_id: str) -> WorkCost | None:
        """The cost of one item so far (to its finish, or its last event when open)."""
        it = self._items.get(value_stream, {}).get(item_id)
        return None if it is None else self._cost([it])

    def streams(self) -> tuple[str, ...]:
        """The value streams with items, sorted."""
        return tuple(sorted(self._items))

    def item_state(
        self, value_stream: str, item_id: str, now: float
    ) -> tuple[str | None, bool, str | None] | None:
        """Where an item is at ``now``: (stage it counts in, finished, item type); None: unknown."""
        it = self._items.get(value_stream, {}).get(item_id)
        if it is None:
            return None
        done = it.finished_at is not None and it.finished_at <= now
        return (None if done else self._where(it, now)), done, it.item_type

    def item_release(self, value_stream: str, item_id: str) -> str | None:
        """The id of the release that took an item to production, if any."""
        it = self._items.get(value_stream, {}).get(item_id)
        return None if it is None else it.finished_by

    def finished_items(self, now: float) -> list[ItemTimes]:
        """The times of every retained item finished at or before ``now``, by finish time.

        Args:
            now: the event time to look from.

        Returns:
            One entry per finished item (the edge observes each once in its histograms).
        """
        out: list[ItemTimes] = []
        for stream in sorted(self._items):
            for it in self._items[stream].values():
                if it.finished_at is None or it.finished_at > now:
                    continue
                s = self._summary(it)
                out.append(
                    ItemTimes(
                        value_stream=stream,
                        item_id=it.item_id,
                        item_type=it.item_type or self.defn.default_item_type,
                        finished_at=it.finished_at,
                        flow_seconds=None if s.flow_start is None else s.end - s.flow_start,
                        active={k: s.active.get(k, 0.0) for k in s.visited},
                        wait={k: s.wait.get(k, 0.0) for k in s.visited},
                    )
                )
        out.sort(key=lambda x: (x.finished_at, x.value_stream, x.item_id))
        return out

    # ---- state

    def dirty(self) -> set[str]:
        """Services whose part of the state changed since the last `clear_dirty`.

        An event of one service can change an item another service opened (both in one value
        stream): the item's service is the one named.
        """
        return set(self._dirty)

    def clear_dirty(self) -> None:
        """Forget which services changed (after the caller stored their state)."""
        self._dirty.clear()

    def item_service(self, value_stream: str, item_id: str) -> str | None:
        """The service whose state holds an item (the one whose event opened it), if retained."""
        it = self._items.get(value_stream, {}).get(item_id)
        return None if it is None else it.service

    def snapshot_state(self, services: Collection[str] | None = None) -> bytes:
        """The tracker's state as bytes (orjson), for a faust table or a file.

        Args:
            services: only the part these services own (their items, releases, waiting events
                and counts); None for the whole state.
        """

        def mine(service: str) -> bool:
            return services is None or service in services

        # A service's items and waiting events are in its own value stream.
        streams = (
            set(self._items) if services is None else {self.defn.stream_of(s) for s in services}
        )
        items = [
            [
                it.stream,
                it.item_id,
                it.item_type,
                it.type_key,
                it.ids,
                [[m.time, m.kind, m.stage, m.state, m.event_id] for m in it.marks],
                it.aliases,
                it.releases,
                it.last_time,
                it.counted,
                it.service,
            ]
            for stream in sorted(streams)
            for it in self._items.get(stream, {}).values()
            if mine(it.service)
        ]
        releases = {k: list(v) for k, v in self._releases.items() if mine(v[2])}
        released: dict[str, dict[str, dict[str, float]]] = {}
        for stream, per_alias in self._released.items():
            for a, rids in per_alias.items():
                kept = {rid: t for rid, t in rids.items() if rid in releases}
                if kept:
                    released.setdefault(stream, {})[a] = kept
        finished = {
            stream: {svc: dict(n) for svc, n in per.items() if mine(svc)}
            for stream, per in self._finished_total.items()
        }
        doc = {
            "v": STATE_VERSION,
            "items": items,
            "released": released,
            "releases": releases,
            "finished_total": {k: v for k, v in finished.items() if v},
            "pending": [
                [
                    e.id, e.time, e.service, e.item_id, e.item_type, e.stage, e.action, e.state,
                    e.source_type, e.commits, e.outcome,
                ]
                for per in self._pending.values()
                for e in per.values()
                if mine(e.service)
            ],
        }  # fmt: skip
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
            raise ValueError(f"flow state version {doc.get('v')!r}, expected {STATE_VERSION}")
        if not merge:
            self._reset()
        for stream, per_alias in doc["released"].items():
            mine = self._released.setdefault(stream, {})
            for a, rids in per_alias.items():
                mine.setdefault(a, {}).update(rids)
        for k, v in doc["releases"].items():
            self._releases[k] = (v[0], v[1], v[2])
        for stream, per in doc["finished_total"].items():
            self._finished_total.setdefault(stream, {}).update(per)
        for row in doc["items"]:
            (
                stream, item_id, item_type, type_key, ids, marks, aliases, releases, last,
                counted, service,
            ) = row  # fmt: skip
            if item_id in self._items.get(stream, {}):
                continue  # held already (another service's part named it too)
            it = _Item(
                stream=stream,
                item_id=item_id,
                service=service,
                item_type=item_type,
                type_key=(type_key[0], type_key[1], type_key[2]),
                ids=dict(ids),
                marks=[_Mark(t, k, s, st, e) for t, k, s, st, e in marks],
                aliases=[],
                releases=dict(releases),
                last_time=last,
                counted=counted,
            )
            it.event_ids = {m.event_id for m in it.marks}
            self._items.setdefault(stream, {})[item_id] = it
            self._open[stream] = self._open.get(stream, 0) + 1
            for a in aliases:
                self._add_alias(it, a)
            self._refresh(it)
        for e in doc["pending"]:
            ev = WorkflowEvent(
                id=e[0], time=e[1], service=e[2], item_id=e[3], item_type=e[4], stage=e[5],
                action=e[6], state=e[7], source_type=e[8], commits=tuple(e[9]), outcome=e[10],
            )  # fmt: skip
            self._park(self.defn.stream_of(ev.service), ev)
        self._fresh.clear()
        self._dirty.difference_update(
            {row[10] for row in doc["items"]} | {e[2] for e in doc["pending"]}
        )

    def forget_services(self, services: Collection[str]) -> None:
        """Drop the part of the state these services own (their partition moved elsewhere)."""
        gone = set(services)
        for items in self._items.values():
            for it in [it for it in items.values() if it.service in gone]:
                self._remove(it)
        rids = {rid for rid, v in self._releases.items() if v[2] in gone}
        for rid in rids:
            del self._releases[rid]
        for released in self._released.values():
            for a in list(released):
                kept = {rid: t for rid, t in released[a].items() if rid not in rids}
                if kept:
                    released[a] = kept
                else:
                    del released[a]
        for stream in list(self._finished_total):
            per = self._finished_total[stream]
            for svc in gone:
                per.pop(svc, None)
            if not per:
                del self._finished_total[stream]
        for stream, pending in self._pending.items():
            for eid in [eid for eid, ev in pending.items() if ev.service in gone]:
                self._unpark(stream, eid)
        self._dirty -= gone

    # ---- internals

    def _mark_for(self, ev: WorkflowEvent) -> _Mark | WorkflowOutcome | None:
        """The mark an event puts on its item's timeline (None: drop the item), or why none."""
        d = self.defn
        rule = d.rule_for(ev.source_type, ev.action, ev.outcome)
        if rule is None:
            return "no-rule"
        if rule.transition == "drop":
            return None
        if rule.transition == "link":
            return _Mark(ev.time, "link", "", "", ev.id)
        if rule.stage is None and rule.transition == "enter" and d.is_done_stage(ev.stage):
            return _Mark(ev.time, "done", "", "", ev.id)
        stage = rule.stage or d.resolve_stage(ev.stage) or rule.default_stage
        if stage is None:
            return "unknown-stage"
        if rule.transition == "enter":
            return _Mark(ev.time, "enter", stage, ev.state or rule.state or d.kind_of(stage), ev.id)
        return _Mark(ev.time, "leave", stage, "", ev.id)

    def _ingest(self, stream: str, ev: WorkflowEvent, mark: _Mark | None) -> WorkflowOutcome:
        d = self.defn
        creates = ev.source_type in d.create_items_from
        items = self._resolve(stream, ev)
        if len(items) > 1 and creates:
            # A change naming a work item (or another change's commits) is the same work.
            items = [self._merge(items)]
        if not items:
            if mark is None:
                return "unlinked"
            if not creates:
                return self._park(stream, ev)
            if self._open.get(stream, 0) >= d.max_open_items:
                return "too-many-open-items"
            item = _Item(stream=stream, item_id=ev.item_id, service=ev.service)
            self._items.setdefault(stream, {})[ev.item_id] = item
            self._open[stream] = self._open.get(stream, 0) + 1
            self._add_alias(item, ev.item_id)
            items = [item]
        outcomes = [self._apply(it, ev, mark) for it in items]
        if "accepted" in outcomes:
            return "accepted"
        if "dropped" in outcomes:
            return "dropped"
        return outcomes[0]

    def _resolve(self, stream: str, ev: WorkflowEvent) -> list[_Item]:
        # An event belongs to the item of its id, and to the items that own its id or commits as
        # aliases (a pipeline run has its own id and carries the commits it builds).
        items = self._items.get(stream, {})
        amap = self._alias.get(stream, {})
        keys = {k for a in (ev.item_id, *ev.commits) for k in amap.get(a, ())}
        if ev.item_id in items:
            keys.add(ev.item_id)
        return [items[k] for k in sorted(keys) if k in items]

    def _merge(self, items: list[_Item]) -> _Item:
        keep = min(items, key=lambda it: self._name(it) or (2, it.item_id))
        for other in items:
            if other is keep:
                continue
            self._remove(other)
            if other.counted:
                per_type = self._finished_total.get(other.stream, {}).get(other.service, {})
                kind = other.item_type or self.defn.default_item_type
                per_type[kind] = max(0, per_type.get(kind, 0) - 1)
            for m in other.marks:
                if m.event_id not in keep.event_ids:
                    bisect.insort(keep.marks, m, key=self._mark_key)
                    keep.event_ids.add(m.event_id)
            keep.releases.update(other.releases)
            for i, prio in other.ids.items():
                keep.ids[i] = min(prio, keep.ids.get(i, prio))
            keep.last_time = max(keep.last_time, other.last_time)
            if other.type_key > keep.type_key:
                keep.item_type, keep.type_key = other.item_type, other.type_key
            for a in other.aliases:
                self._add_alias(keep, a)
        self._rekey(keep)
        self._refresh(keep)
        return keep

    @staticmethod
    def _name(it: _Item) -> tuple[int, str] | None:
        # A work item's id names the item when there is one, so the ledger can be asked by it.
        return min(((p, i) for i, p in it.ids.items()), default=None)

    def _rekey(self, it: _Item) -> None:
        name = self._name(it)
        items = self._items.get(it.stream, {})
        if name is None or name[1] == it.item_id or name[1] in items:
            return
        old, it.item_id = it.item_id, name[1]
        del items[old]
        items[it.item_id] = it
        amap = self._alias.get(it.stream, {})
        for a in it.aliases:
            keys = amap.get(a, [])
            if old in keys:
                keys[keys.index(old)] = it.item_id

    def _park(self, stream: str, ev: WorkflowEvent) -> WorkflowOutcome:
        pending = self._pending.setdefault(stream, {})
        if ev.id in pending:
            return "pending"
        if len(pending) >= self.defn.max_pending_events:
            # The oldest waiting event is the least likely to find its item: it makes room.
            self._unpark(stream, next(iter(pending)))
        pending[ev.id] = ev
        self._dirty.add(ev.service)
        index = self._pending_index.setdefault(stream, {})
        for a in dict.fromkeys((ev.item_id, *ev.commits)):
            index.setdefault(a, []).append(ev.id)
        return "pending"

    def _unpark(self, stream: str, event_id: str) -> WorkflowEvent | None:
        ev = self._pending.get(stream, {}).pop(event_id, None)
        if ev is None:
            return None
        self._dirty.add(ev.service)
        index = self._pending_index.get(stream, {})
        for a in (ev.item_id, *ev.commits):
            ids = index.get(a)
            if ids is not None and event_id in ids:
                ids.remove(event_id)
                if not ids:
                    del index[a]
        return ev

    def _drain(self) -> None:
        # Events waiting for an item whose id or commits just became known are applied now.
        while self._fresh:
            stream, alias = self._fresh.pop()
            for eid in list(self._pending_index.get(stream, {}).get(alias, ())):
                ev = self._unpark(stream, eid)
                mark = self._mark_for(ev) if ev is not None else "unlinked"
                if ev is not None and not isinstance(mark, str):
                    self._ingest(stream, ev, mark)

    def _add_alias(self, it: _Item, alias: str) -> None:
        if alias in it.aliases:
            return
        it.aliases.append(alias)
        keys = self._alias.setdefault(it.stream, {}).setdefault(alias, [])
        if it.item_id not in keys:
            keys.append(it.item_id)
        for rid, t in self._released.get(it.stream, {}).get(alias, {}).items():
            it.releases[rid] = t
        if self._pending.get(it.stream):
            self._fresh.append((it.stream, alias))

    def _apply(self, it: _Item, ev: WorkflowEvent, mark: _Mark | None) -> WorkflowOutcome:
        if ev.id in it.event_ids:
            return "duplicate"
        if it.finished_at is not None and ev.time > it.finished_at:
            return "after-finish"
        if mark is None:
            self._remove(it)
            return "dropped"
        if len(it.marks) >= self.defn.max_events_per_item:
            return "too-many-events"
        bisect.insort(it.marks, mark, key=self._mark_key)
        it.event_ids.add(ev.id)
        it.last_time = max(it.last_time, ev.time)
        if ev.item_type is not None:
            key = (1 if ev.source_type == "workitem" else 0, ev.time, ev.id)
            if key > it.type_key:
                it.item_type, it.type_key = ev.item_type, key
        if ev.source_type in self.defn.create_items_from:
            prio = 0 if ev.source_type == "workitem" else 1
            it.ids[ev.item_id] = min(prio, it.ids.get(ev.item_id, prio))
        for a in (ev.item_id, *ev.commits):
            self._add_alias(it, a)
        self._rekey(it)
        self._refresh(it)
        return "accepted"

    def _mark_key(self, m: _Mark) -> tuple[float, int, int, str, str]:
        # Sorting by content (not arrival) makes the timeline independent of delivery order.
        return (m.time, _KIND_RANK[m.kind], self._order.get(m.stage, -1), m.state, m.event_id)

    def _remove(self, it: _Item) -> None:
        items = self._items.get(it.stream, {})
        if items.pop(it.item_id, None) is None:
            return
        self._dirty.add(it.service)
        if it.finished_at is None:
            self._open[it.stream] = self._open.get(it.stream, 0) - 1
        amap = self._alias.get(it.stream, {})
        for a in it.aliases:
            keys = amap.get(a)
            if keys is not None and it.item_id in keys:
                keys.remove(it.item_id)
                if not keys:
                    del amap[a]

    def _refresh(self, it: _Item) -> None:
        self._dirty.add(it.service)
        was_open = it.finished_at is None
        first = it.marks[0].time if it.marks else None
        best: tuple[float, str | None] | None = None
        if first is not None:
            # A release before the item's first known event cannot have shipped it.
            for rid, t in sorted(it.releases.items(), key=lambda kv: (kv[1], kv[0])):
                if t >= first:
                    best = (t, rid)
                    break
        for m in it.marks:
            if m.kind == "done":
                if best is None or m.time < best[0]:
                    best = (m.time, None)
                break
        it.finished_at, it.finished_by = best if best is not None else (None, None)
        it.cache = None
        if was_open and it.finished_at is not None:
            self._open[it.stream] = self._open.get(it.stream, 0) - 1
            if not it.counted:
                it.counted = True
                per_type = self._finished_total.setdefault(it.stream, {}).setdefault(it.service, {})
                kind = it.item_type or self.defn.default_item_type
                per_type[kind] = per_type.get(kind, 0) + 1

    def _walk(self, it: _Item, end: float) -> _Walk:
        """Replay an item's marks up to ``end``: closed segments and where the item is then."""
        w = _Walk()
        for m in it.marks:
            if m.time > end or m.kind == "done":
                break
            if m.kind == "link":
                continue
            if m.kind == "enter":
                if w.cur == (m.stage, m.state):
                    continue
                if w.cur is not None:
                    w.segs.append((w.cur[0], w.cur[1], w.since, m.time))
                elif w.gap_since is not None:
                    # The queue in front of a stage is waiting time of that stage.
                    w.segs.append((m.stage, "waiting", w.gap_since, m.time))
                w.cur, w.since, w.gap_since = (m.stage, m.state), m.time, None
            elif w.cur is not None:
                # Leaving the current stage, or one after it (a stage that was never reported,
                # e.g. "merged" ends review for a change seen only in dev), ends the current one.
                if m.stage == w.cur[0] or self._order[m.stage] > self._order[w.cur[0]]:
                    w.segs.append((w.cur[0], w.cur[1], w.since, m.time))
                    w.last_left, w.cur, w.gap_since = w.cur[0], None, m.time
            elif w.gap_since is None and not w.segs:
                # The first thing known about the item is that it left a stage.
                w.last_left, w.gap_since = m.stage, m.time
        return w

    def _summary(self, it: _Item) -> _Summary:
        assert it.finished_at is not None
        if it.cache is None:
            it.cache = self._summary_at(it, it.finished_at)
        return it.cache

    def _summary_at(self, it: _Item, end: float) -> _Summary:
        w = self._walk(it, end)
        segs = w.segs
        if w.cur is not None:
            segs.append((w.cur[0], w.cur[1], w.since, end))
        elif w.gap_since is not None:
            segs.append((self.defn.release_stage, "waiting", w.gap_since, end))
        active: dict[str, float] = {}
        wait: dict[str, float] = {}
        visited: list[str] = []
        flow_start: float | None = None
        for stage, state, t0, t1 in segs:
            if stage not in visited:
                visited.append(stage)
            bucket = active if state == "active" else wait
            bucket[stage] = bucket.get(stage, 0.0) + (t1 - t0)
            if self.defn.in_flow(stage) and (flow_start is None or t0 < flow_start):
                flow_start = t0
        return _Summary(end, flow_start, active, wait, visited)

    def _where(self, it: _Item, now: float) -> str | None:
        """The stage an open item counts in at ``now`` for flow load."""
        if not it.marks or it.marks[0].time > now:
            return None
        w = self._walk(it, now)
        if w.cur is not None:
            return w.cur[0]
        if w.gap_since is not None and w.last_left is not None:
            names = self.defn.stage_names()
            i = self._order[w.last_left] + 1
            return names[i] if i < len(names) else self.defn.release_stage
        return None

    def _cost(self, items: list[_Item]) -> WorkCost:
        active = wait = flow = 0.0
        for it in items:
            # An open item costs what it took so far, up to its last event.
            s = (
                self._summary(it)
                if it.finished_at is not None
                else self._summary_at(it, it.last_time)
            )
            active += sum(v for k, v in s.active.items() if self.defn.in_flow(k))
            wait += sum(v for k, v in s.wait.items() if self.defn.in_flow(k))
            if s.flow_start is not None:
                flow += s.end - s.flow_start
        return WorkCost(len(items), tuple(it.item_id for it in items), active, wait, flow)

    def _report(self, stream: str, now: float, period: float) -> FlowReport:
        d = self.defn
        start = now - period
        items = self._items.get(stream, {})
        finished = sorted(
            (
                it
                for it in items.values()
                if it.finished_at is not None and start < it.finished_at <= now
            ),
            key=lambda it: (it.finished_at, it.item_id),
        )
        summaries = [self._summary(it) for it in finished]
        flowing = [s for s in summaries if s.flow_start is not None]
        flow_times = [s.end - s.flow_start for s in flowing if s.flow_start is not None]
        load: dict[str, int] = {name: 0 for name in d.stage_names()}
        for it in items.values():
            if it.finished_at is not None and it.finished_at <= now:
                continue
            where = self._where(it, now)
            if where is not None:
                load[where] += 1
        flow_wait_total = math.fsum(v for s in flowing for k, v in s.wait.items() if d.in_flow(k))
        active_total = math.fsum(v for s in flowing for k, v in s.active.items() if d.in_flow(k))
        stages: list[StageReport] = []
        for sd in d.stages:
            visits = [s for s in summaries if sd.name in s.visited]
            a = [s.active.get(sd.name, 0.0) for s in visits]
            w = [s.wait.get(sd.name, 0.0) for s in visits]
            w_total = math.fsum(w)
            share = None
            if d.in_flow(sd.name):
                share = w_total / flow_wait_total if flow_wait_total > 0 else 0.0
            stages.append(
                StageReport(
                    stage=sd.name,
                    kind=sd.kind,
                    in_flow=d.in_flow(sd.name),
                    items=len(visits),
                    active=Distribution.of(a),
                    wait=Distribution.of(w),
                    active_seconds=math.fsum(a),
                    wait_seconds=w_total,
                    wait_share=share,
                    load=load[sd.name],
                )
            )
        bottleneck: Bottleneck | None = None
        for sr in stages:
            # Strictly larger: on a tie the earlier stage is named, deterministically.
            if (
                sr.in_flow
                and sr.wait_seconds > 0
                and sr.wait is not None
                and (bottleneck is None or sr.wait_seconds > bottleneck.wait_seconds)
            ):
                bottleneck = Bottleneck(sr.stage, sr.wait_share or 0.0, sr.wait_seconds, sr.wait)
        by_type = {t: 0 for t in ITEM_TYPES}
        for it in finished:
            t = it.item_type or d.default_item_type
            by_type[t] = by_type.get(t, 0) + 1
        n = len(finished)
        flow_total = math.fsum(flow_times)
        totals = {t: 0 for t in ITEM_TYPES}
        for per_type in self._finished_total.get(stream, {}).values():
            for t, c in per_type.items():
                totals[t] = totals.get(t, 0) + c
        return FlowReport(
            value_stream=stream,
            period_start=start,
            period_end=now,
            finished=n,
            velocity_per_day=n / (period / 86400.0) if period > 0 else 0.0,
            flow_time=Distribution.of(flow_times),
            flow_seconds=flow_total,
            active_seconds=active_total,
            wait_seconds=flow_wait_total,
            efficiency=active_total / flow_total if flow_total > 0 else None,
            stages=tuple(stages),
            finished_by_type=by_type,
            distribution={t: c / n for t, c in by_type.items()} if n else {},
            bottleneck=bottleneck,
            open_items=sum(load.values()),
            finished_total_by_type=totals,
        )


def flow_metric_samples(
    reports: dict[str, FlowReport],
) -> list[tuple[str, dict[str, str], float]]:
    """The Prometheus samples of flow reports, as (metric name, labels, value).

    Gauges are the complete set for this moment: a label set absent here has no value now (the
    edge should remove it). ``valueloop_flow_items_finished_total`` is cumulative: the edge
    increments its counter by the increase since its last export.

    Args:
        reports: value stream -> report, from ``FlowTracker.snapshot``.

    Returns:
        The samples, in a stable order.
    """
    out: list[tuple[str, dict[str, str], float]] = []
    for vs, r in sorted(reports.items()):
        if r.flow_time is not None:
            for q, v in r.flow_time.percentiles().items():
                out.append(
                    ("valueloop_flow_time_seconds", {"value_stream": vs, "percentile": q}, v)
                )
        for sr in r.stages:
            for name, dist in (
                ("valueloop_stage_active_seconds", sr.active),
                ("valueloop_stage_wait_seconds", sr.wait),
            ):
                if dist is not None:
                    for q, v in dist.percentiles().items():
                        out.append(
                            (name, {"value_stream": vs, "stage": sr.stage, "percentile": q}, v)
                        )
        if r.efficiency is not None:
            out.append(("valueloop_flow_efficiency_ratio", {"value_stream": vs}, r.efficiency))
        for sr in r.stages:
            out.append(
                (
                    "valueloop_flow_load_items",
                    {"value_stream": vs, "stage": sr.stage},
                    float(sr.load),
                )
            )
        for t, c in sorted(r.finished_total_by_type.items()):
            out.append(
                (
                    "valueloop_flow_items_finished_total",
                    {"value_stream": vs, "item_type": t},
                    float(c),
                )
            )
        for t, share in sorted(r.distribution.items()):
            out.append(
                ("valueloop_flow_distribution_ratio", {"value_stream": vs, "item_type": t}, share)
            )
        if r.bottleneck is not None:
            # Every flow stage gets a value: a moving bottleneck flips 1 -> 0, no stale series.
            for sr in r.stages:
                if sr.in_flow:
                    out.append(
                        (
                            "valueloop_bottleneck_stage",
                            {"value_stream": vs, "stage": sr.stage},
                            1.0 if sr.stage == r.bottleneck.stage else 0.0,
                        )
                    )
            out.append(
                (
                    "valueloop_bottleneck_wait_share_ratio",
                    {"value_stream": vs},
                    r.bottleneck.wait_share,
                )
            )
    return out
