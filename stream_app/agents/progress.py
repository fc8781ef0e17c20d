"""The worker's input progress: honest lag, stalled partitions for /health and /metrics.

Reads faust's consumer (committed offsets, the broker's end offsets) and feeds the pure
`StallWatch` (stream_app/core/progress.py). It runs on its own timer, apart from the checkpoint:
a stuck batch step holds the checkpoint lock, and this must still see and report it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust

from stream_app.core.progress import PartitionOffsets, PartitionProgress, StallWatch, stalled
from stream_app.metrics import Metrics

log = logging.getLogger(__name__)

BROKER_TIMEOUT = 10.0  # seconds after which an offsets request to the broker is given up
BROKER_EVERY = 5.0  # seconds between two end-offset requests


class InputProgress:
    """Observes the worker's assigned input partitions; the last observation serves /health."""

    def __init__(
        self,
        app: faust.App,
        metrics: Metrics,
        roles_by_topic: Mapping[str, str],
        stall_after: float,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.roles_by_topic = dict(roles_by_topic)
        self.watch = StallWatch(stall_after)
        self.last: list[PartitionProgress] = []
        self._ends: dict[Any, int] = {}  # last end offset the broker gave, per partition
        self._starts: dict[Any, int] = {}  # log start offsets of never-committed partitions
        self._asking: dict[str, asyncio.Future[Any]] = {}  # broker requests in flight
        self._asked: dict[str, float] = {}  # when each was last started (monotonic)
        self._reported: set[tuple[str, int]] = set()  # stalled partitions already logged

    def _poll(self, what: str, request: Callable[[], Awaitable[Any]], every: float) -> Any:
        """The answer to the broker request `what` if it came since the last call, else None;
        starts the next one when none is pending and `every` seconds have passed.

        Never waits: the timer stays short, and requests never pile up on faust's consumer thread
        (which also fetches and heartbeats) while the broker is slow or away.
        """
        now = time.monotonic()
        answer = None
        pending = self._asking.get(what)
        if pending is not None and (pending.done() or now - self._asked[what] > BROKER_TIMEOUT):
            del self._asking[what]
            if not pending.done():
                pending.cancel()
            elif not pending.cancelled() and pending.exception() is None:
                answer = pending.result()
            else:
                log.debug("%s offsets not available: %r", what, pending)
            pending = None
        if pending is None and now - self._asked.get(what, float("-inf")) >= every:
            self._asked[what] = now
            self._asking[what] = asyncio.ensure_future(request())
        return answer

    async def observe(self) -> list[PartitionProgress]:
        """Read the offsets, update the watch, the lag and stall series; returns the progress."""
        offsets = self.offsets()
        self.last = self.watch.observe(time.monotonic(), offsets)
        lag: dict[str, float] = dict.fromkeys(self.roles_by_topic.values(), 0.0)
        stuck: dict[str, float] = dict.fromkeys(lag, 0.0)
        waited: dict[str, float] = dict.fromkeys(lag, 0.0)
        for p in self.last:
            role = self.roles_by_topic[p.topic]
            lag[role] += p.lag
            stuck[role] += 1.0 if p.stalled else 0.0
            waited[role] = max(waited[role], p.since_progress)
        for role in lag:
            self.metrics.consumer_lag.labels(role).set(lag[role])
            self.metrics.intake_stalled.labels(role).set(stuck[role])
            self.metrics.intake_since_progress.labels(role).set(round(waited[role], 3))
        now_stalled = {(p.topic, p.partition): p for p in stalled(self.last)}
        for tp in now_stalled.keys() - self._reported:  # once per stall, not every second
            p = now_stalled[tp]
            log.warning(
                "input %s[%d] stalled: no progress for %.0f s with %d messages of lag",
                p.topic,
                p.partition,
                p.since_progress,
                p.lag,
            )
        for tp in self._reported - now_stalled.keys():
            log.info("input %s[%d] makes progress again (or was revoked)", *tp)
        self._reported = set(now_stalled)
        return self.last

    def stalled(self) -> list[PartitionProgress]:
        """Stalled partitions at the last observation."""
        return stalled(self.last)

    def offsets(self) -> dict[tuple[str, int], PartitionOffsets]:
        """Committed, earliest and end offsets of the assigned input partitions.

        The committed offset is faust's (what the group committed: every earlier message was
        processed and its effects are in Kafka). The end is the broker's end offset, asked every
        BROKER_EVERY seconds, or the fetcher's high watermark when that is higher (the fetcher's
        alone would understate the lag: it stops moving when the stream's buffer is full).
        """
        consumer: Any = self.app.consumer
        try:
            tps = [tp for tp in consumer.assignment() if tp.topic in self.roles_by_topic]
        except Exception:  # not started yet, or between assignments
            return {}
        if not tps:
            return {}
        committed: Mapping[Any, int | None] = getattr(
            consumer, "_committed_offset", defaultdict(lambda: None)
        )
        done = {tp: committed.get(tp) for tp in tps}
        ends = self._poll("ends", lambda: consumer.highwaters(*tps), BROKER_EVERY)
        for tp, end in (ends or {}).items():
            if end is not None:  # an answer may be older than the fetcher's view: keep the max
                self._ends[tp] = max(int(end), self._ends.get(tp, 0))
        for tp in tps:  # the fetcher's view, between two answers of the broker
            try:
                cached = consumer.highwater(tp)
            except Exception:  # revoked in the meantime
                continue
            if cached is not None:
                self._ends[tp] = max(int(cached), self._ends.get(tp, 0))
        fresh = [tp for tp in tps if not done[tp] and tp not in self._starts]
        starts = (
            self._poll("starts", lambda: consumer.earliest_offsets(*fresh), 0.0) if fresh else None
        )
        for tp, start in (starts or {}).items():
            if start is not None:
                self._starts[tp] = int(start)
        return {
            (tp.topic, tp.partition): PartitionOffsets(
                done=done[tp] or None,
                start=self._starts.get(tp, 0),
                end=self._ends.get(tp),
            )
            for tp in tps
        }
