"""Input progress per partition: honest lag, and stalls (lag that does not shrink for too long).

Pure: the worker passes the offsets it reads from its consumer and the time (`now`); see
`PartitionOffsets` for which offsets. A worker whose intake is stuck still fetches, so its read
position says nothing: lag is counted from the offset the worker has *finished* with (the group's
committed offset) to the end of the partition, and a partition stalls when that offset stays put
for `stall_after` seconds while there is lag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """What the worker knows of one assigned input partition.

    Attributes:
        done: the next offset to process that every earlier one was processed (the committed
            offset); None when the group never committed one.
        start: the partition's earliest offset (log start), used when `done` is None.
        end: the end of the partition (high watermark); None when unknown yet.
    """

    done: int | None
    start: int
    end: int | None

    @property
    def lag(self) -> int:
        """Messages not processed yet (0 when the end is unknown)."""
        if self.end is None:
            return 0
        return max(0, self.end - (self.done if self.done is not None else self.start))


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One partition's state at an observation."""

    topic: str
    partition: int
    lag: int
    since_progress: float  # seconds since `done` last moved while lagging (0 without lag)
    stalled: bool


class StallWatch:
    """Remembers when each assigned partition last made progress."""

    def __init__(self, stall_after: float) -> None:
        """Args:
        stall_after: seconds without progress, while lagging, after which a partition stalls.
        """
        self.stall_after = stall_after
        self._last: dict[TopicPartition, tuple[int | None, float]] = {}  # (done, since)

    def observe(
        self, now: float, offsets: Mapping[TopicPartition, PartitionOffsets]
    ) -> list[PartitionProgress]:
        """Record an observation of the assigned partitions; returns each one's progress.

        A partition makes progress when its `done` offset moved since the last observation, or
        when it has no lag. A partition seen for the first time (newly assigned) counts from
        `now`; partitions not in `offsets` any more (revoked) are forgotten.
        """
        out: list[PartitionProgress] = []
        for tp in sorted(offsets):
            o = offsets[tp]
            lag = o.lag
            prev = self._last.get(tp)
            moved = prev is None or prev[0] != o.done or lag == 0
            since = now if moved or prev is None else prev[1]
            self._last[tp] = (o.done, since)
            waited = now - since if lag > 0 else 0.0
            out.append(PartitionProgress(tp[0], tp[1], lag, waited, waited >= self.stall_after))
        for tp in set(self._last) - set(offsets):
            del self._last[tp]
        return out


def stalled(progress: list[PartitionProgress]) -> list[PartitionProgress]:
    """The stalled partitions of an observation."""
    return [p for p in progress if p.stalled]
