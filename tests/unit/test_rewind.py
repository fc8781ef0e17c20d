"""rewind_uncommitted: after a rebalance, input partitions without a committed offset go back to
their earliest offset (aiokafka's seek_to_committed leaves them where the fetcher was)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from stream_app.agents.intake import rewind_uncommitted


class FakeConsumer:
    """Records the calls rewind_uncommitted makes (this tests the decision, not Kafka)."""

    def __init__(self, committed: dict[TP, int | None], earliest: dict[TP, int]) -> None:
        self.committed = committed
        self.earliest = earliest
        self.seeks: dict[TP, int] = {}

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return dict(self.committed)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest[tp] for tp in tps}

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.update(partitions)


def run(consumer: FakeConsumer, topics: set[str]) -> int:
    app: Any = SimpleNamespace(consumer=consumer)
    return asyncio.run(rewind_uncommitted(app, topics))


def test_uncommitted_and_zero_input_partitions_go_to_their_earliest_offset() -> None:
    committed = {
        TP("telemetry", 0): None,  # never committed
        TP("telemetry", 1): 0,  # committed at 0: aiokafka does not seek it either
        TP("telemetry", 2): 1234,  # committed: faust seeks it
        TP("impact-state-changelog", 0): None,  # not an input: tables recover it themselves
    }
    earliest = {TP("telemetry", 0): 0, TP("telemetry", 1): 17}
    consumer = FakeConsumer(committed, earliest)
    assert run(consumer, {"telemetry"}) == 2
    assert consumer.seeks == {TP("telemetry", 0): 0, TP("telemetry", 1): 17}


def test_nothing_to_rewind_when_every_input_partition_is_committed() -> None:
    consumer = FakeConsumer({TP("deployments", 0): 5}, {})
    assert run(consumer, {"deployments"}) == 0
    assert consumer.seeks == {}
