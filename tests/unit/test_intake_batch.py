"""BatchRunner: what one input batch does, decided without Kafka or faust.

Stale input (fetched under an earlier consumer generation, or of a partition no longer assigned)
is neither applied nor acked: the partition's owner reads it again from the committed offset.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from faust.types import TP

from stream_app.agents.intake import BatchRunner
from stream_app.codec import Decoded, KpiSample, encode
from stream_app.metrics import Metrics
from stream_app.pipeline import Step

TOPIC = "telemetry"
T0 = 1764064800.0


def event(offset: int, generation: int, partition: int = 0, value: bytes | None = None) -> Any:
    sample = KpiSample("checkout", "orders", T0 + offset, 1.0)
    msg = SimpleNamespace(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        tp=TP(TOPIC, partition),
        generation_id=generation,
        key=b"checkout",
        value=encode(sample) if value is None else value,
        headers=[],
    )
    return SimpleNamespace(message=msg)


class Recorder:
    def __init__(self, replayed: frozenset[int] = frozenset()) -> None:
        self.seen: list[int] = []
        self.replayed = replayed

    def __call__(self, ev: Decoded, topic: str, partition: int, offset: int) -> Step | None:
        if offset in self.replayed:
            return None
        self.seen.append(offset)
        return Step([], "accepted", ev.service)


DeadLetter = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def runner(
    handle: Recorder, metrics: Metrics, untracked: list[Any], dead: list[DeadLetter] | None = None
) -> BatchRunner:
    sink = dead if dead is not None else []
    return BatchRunner(
        handle,
        metrics,
        {TOPIC: "telemetry"},
        impact="impact",
        ledger="ledger",
        deadletter=lambda key, value, headers: sink.append((key, value, headers)),
        max_bytes=1_000_000,
        untrack=untracked.append,
    )


def test_stale_events_are_neither_applied_nor_acked() -> None:
    handle, metrics, untracked = Recorder(), Metrics(), list[Any]()
    run = runner(handle, metrics, untracked)
    events = [event(0, 1), event(1, 1), event(2, 2), event(3, 2), event(4, 2, partition=1)]
    sends, done = run(events, {TP(TOPIC, 0)}, generation=2)
    assert handle.seen == [2, 3]  # generation 1 and the unassigned partition 1 are skipped
    assert [e.message.offset for e in done] == [2, 3]
    assert sends == []
    assert [m.offset for m in untracked] == [0, 1, 4]  # faust must not wait for their acks
    assert metrics.stale_skipped._value.get() == 3


def test_replays_and_dead_letters_are_acked() -> None:
    handle, metrics, untracked = Recorder(replayed=frozenset({1})), Metrics(), list[Any]()
    dead: list[DeadLetter] = []
    run = runner(handle, metrics, untracked, dead)
    events = [event(0, 5), event(1, 5), event(2, 5, value=b"{not json")]
    sends, done = run(events, {TP(TOPIC, 0)}, generation=5)
    assert [e.message.offset for e in done] == [0, 1, 2]  # all acked: nothing to read again
    assert handle.seen == [0]
    assert metrics.replayed_skipped._value.get() == 1
    assert sends == []
    assert [(key, value) for key, value, _ in dead] == [(b"checkout", b"{not json")]
    headers = dict(dead[0][2])
    assert headers["valueloop.source.offset"] == b"2"
    assert untracked == []


class FakeDeadLetters:
    def __init__(self, delivered: bool) -> None:
        self.delivered = delivered

    async def deliver(self, timeout: float = 5.0) -> bool:
        return self.delivered


class FakeStream:
    def __init__(self) -> None:
        self.acked: list[Any] = []

    async def ack(self, event: Any) -> None:
        self.acked.append(event)


async def _noop() -> None:
    return None


def test_a_checkpoint_acks_nothing_until_the_dead_letters_are_delivered() -> None:
    import asyncio

    from stream_app.agents.intake import Checkpoint

    app: Any = SimpleNamespace(producer=SimpleNamespace(flush=_noop))
    stream, snapshots = FakeStream(), []
    dead = FakeDeadLetters(delivered=False)
    cp = Checkpoint(deadletters=dead)  # type: ignore[arg-type]  # a stand-in for DeadLetters
    cp.pending.append((stream, [event(0, 1), event(1, 1)]))
    asyncio.run(cp.run(app, lambda: snapshots.append("written")))
    assert stream.acked == [] and snapshots == [] and len(cp.pending) == 1  # broker away: wait
    dead.delivered = True
    asyncio.run(cp.run(app, lambda: snapshots.append("written")))
    assert [e.message.offset for e in stream.acked] == [0, 1]
    assert snapshots == ["written"] and cp.pending == []


def test_the_message_key_names_the_service_of_an_event_that_names_none() -> None:
    """A pipelinerun keyed ``shop`` (subject.source ``/ci/pipelines/123``) reaches the core as
    shop's: the worker hands the Kafka key to the codec."""
    run_finished = {
        "context": {
            "version": "0.4.0",
            "id": "run-123-finished",
            "chain_id": "c-1",
            "source": "/ci",
            "type": "dev.cdevents.pipelinerun.finished.0.2.0",
            "timestamp": "2026-03-02T10:00:00Z",
        },
        "subject": {"id": "123", "source": "/ci/pipelines/123", "content": {"outcome": "success"}},
    }
    services: list[str] = []

    def handle(ev: Decoded, topic: str, partition: int, offset: int) -> Step:
        services.append(ev.service)
        return Step([], "accepted", ev.service)

    run = BatchRunner(
        handle,
        Metrics(),
        {"workflow": "workflow"},
        impact="impact",
        ledger="ledger",
        deadletter=lambda *_: None,
        max_bytes=1_000_000,
    )
    ev = event(0, 1)
    ev.message.topic, ev.message.tp = "workflow", TP("workflow", 0)
    ev.message.key, ev.message.value = b"shop", orjson.dumps(run_finished)
    run([ev], {TP("workflow", 0)}, generation=1)
    assert services == ["shop"]


def test_releases_are_forwarded_and_wrongly_keyed_events_dead_lettered() -> None:
    from dataclasses import replace

    from stream_app.codec import Release, decode

    rel = Release("r1", "cart", "1.0", T0, "deployed")
    forwarded: list[tuple[str, bytes]] = []
    dead: list[DeadLetter] = []

    def handle(ev: Decoded, topic: str, partition: int, offset: int) -> Step:
        return Step([], "accepted", ev.service, forward=("shop",) if offset == 0 else ())

    run = replace(
        runner(Recorder(), Metrics(), [], dead),
        handle=handle,
        forward=lambda product, value: forwarded.append((product, value)),
        wrong_key=lambda ev, key: "keyed wrong" if key == b"bad" else None,
    )
    first, second = event(0, 1, value=encode(rel)), event(1, 1)
    first.message.topic = second.message.topic = TOPIC
    run.role_of_topic = {TOPIC: "deployments"}
    second.message.value = encode(rel)
    second.message.key = b"bad"
    run(
        [first, second],
        {TP(TOPIC, 0)},
        generation=1,
    )
    assert [(p, decode("deployments", v)) for p, v in forwarded] == [("shop", rel)]
    assert [dict(h)["valueloop.reason"] for _, _, h in dead] == [b"wrong-key"]
