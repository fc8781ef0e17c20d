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

BROKER_TIMEOUT = 5.0  # seconds for the end/earliest offsets from the broker


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
        self._asking: dict[str, asyncio.Future[Any]] = {}

    async def _ask(self, what: str, request: Callable[[], Awaitable[Any]]) -> Any:
        """The answer of a broker request, or None when it fails or takes longer than
        BROKER_TIMEOUT; a request still pending from an earlier tick is waited for, not repeated
        (while the broker is away they would pile up on faust's consumer thread)."""
        pending = self._asking.get(what)
        if pending is None or pending.done():
            pending = self._asking[what] = asyncio.ensure_future(request())
            # Its failure may come after we stopped waiting: retrieve it, nothing more.
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.wait_for(asyncio.shield(pending), BROKER_TIMEOUT)
        except Exception as exc:
            log.debug("%s offsets not available: %r", what, exc)
            return None

    async def observe(self) -> list[PartitionProgress]:
        """Read the offsets, update the watch, the lag and stall series; returns the progress."""
        offsets = await self.offsets()
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
        for p in stalled(self.last):
            log.warning(
                "input %s[%d] stalled: no progress for %.0f s with %d messages of lag",
                p.topic,
                p.partition,
                p.since_progress,
                p.lag,
            )
        return self.last

    def stalled(self) -> list[PartitionProgress]:
        """Stalled partitions at the last observation."""
        return stalled(self.last)

    async def offsets(self) -> dict[tuple[str, int], PartitionOffsets]:
        """Committed, earliest and end offsets of the assigned input partitions.

        The committed offset is faust's (what the group committed: every earlier message was
        processed and its effects are in Kafka); the end is asked from the broker, falling back to
        the last one known (the fetcher's high watermark stops moving when the stream is full).
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
        ends = await self._ask("ends", lambda: consumer.highwaters(*tps))
        if ends is not None:
            self._ends.update({tp: int(v) for tp, v in ends.items() if v is not None})
        else:  # the broker is away (/health says so on its own), or slow: the fetcher's view
            for tp in tps:
                try:
                    cached = consumer.highwater(tp)
                except Exception:  # revoked in the meantime
                    continue
                if cached is not None:
                    self._ends[tp] = max(int(cached), self._ends.get(tp, 0))
        fresh = [tp for tp in tps if not done[tp] and tp not in self._starts]
        if fresh:
            starts = await self._ask("starts", lambda: consumer.earliest_offsets(*fresh))
            self._starts.update({tp: int(v) for tp, v in (starts or {}).items() if v is not None})
        return {
            (tp.topic, tp.partition): PartitionOffsets(
                done=done[tp] or None,
                start=self._starts.get(tp, 0),
                end=self._ends.get(tp),
            )
            for tp in tps
        }
