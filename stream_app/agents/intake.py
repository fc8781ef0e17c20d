"""Input agents: decode message batches, dead-letter what cannot be used, hand the rest to the core.

Processing is batched (`noack_take`) and acked late: a batch's events are acked only by the next
checkpoint (`Checkpoint.run`), after the verdicts they caused were delivered and the state
snapshots covering them were handed to the producer. See stream_app/agents/state.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust

from stream_app.codec import Decoded, Rejected, Role, decode, encode, encode_verdict
from stream_app.deadletter import fit, limit_for
from stream_app.events.ledger import encode_ledger
from stream_app.metrics import Metrics
from stream_app.pipeline import Step
from stream_app.settings import Settings

# The core's handler: (event, topic, partition, offset) -> what it did, or None when the event's
# effect is already in the restored state (a replay after a crash or a rebalance).
Handler = Callable[[Decoded, str, int, int], Step | None]
Send = tuple[Any, bytes | None, bytes, Any]  # (topic, key, value, headers)

log = logging.getLogger(__name__)

DETAIL_LIMIT = 1000
DEADLETTER_PRODUCER_MAX = 1_000_000  # librdkafka's default message.max.bytes
FIRST_OWN = "valueloop.source.topic"  # deadletter_headers appends ours after the original's
BATCH_MAX = 2000  # events per batch
BATCH_WITHIN = 0.05  # seconds to wait for a batch to fill
# Agents and the input roles each consumes. Deployments and telemetry share one agent (and so one
# partition owner) because both are keyed by service and the release-impact join must be local.
AGENT_ROLES: tuple[tuple[str, tuple[Role, ...]], ...] = (
    ("impact-intake", ("deployments", "telemetry")),
    ("flow-intake", ("workflow",)),
    ("incident-intake", ("incidents",)),
)


def header_list(headers: Any) -> list[tuple[str, bytes | None]]:
    """Kafka headers as a list of (name, value), whatever shape the client gave."""
    if not headers:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return [(str(k), v) for k, v in headers]


def deadletter_headers(msg: Any, role: str, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """Headers that say where a dead-lettered message came from and why it was rejected."""
    original = [(k, v) for k, v in header_list(msg.headers) if v is not None]
    return [
        *original,
        ("valueloop.source.topic", str(msg.topic).encode()),
        ("valueloop.source.role", role.encode()),
        ("valueloop.source.partition", str(msg.partition).encode()),
        ("valueloop.source.offset", str(msg.offset).encode()),
        ("valueloop.reason", reason.encode()),
        ("valueloop.detail", detail[:DETAIL_LIMIT].encode("utf-8", "replace")),
    ]


class DeadLetters:
    """The dead-letter topic's producer: confluent-kafka, not faust.

    faust's per-message send path costs about 300 us (aiokafka's Python partitioner and
    accumulator, faust's futures and sensors); a flood of bad input sent through it cut the
    worker's throughput by a third. librdkafka queues a message in a few microseconds. Messages
    never time out (message.timeout.ms = 0): while the broker is away they wait in the queue, and
    the input they came from stays unacked until `deliver` sees them delivered.

    A message too large to re-produce (the broker accepted it compressed, or on a topic with a
    raised `max.message.bytes`) is sent as a truncated copy with its size and digest
    (stream_app/deadletter.py): a dead letter never fails for its size.
    """

    def __init__(
        self, settings: Settings, on_truncated: Callable[[], object] = lambda: None
    ) -> None:
        # confluent-kafka is only needed by a worker
        from stream_app.producer import Sender, topic_max_message_bytes

        self.topic = settings.topic_deadletter
        topic_max = topic_max_message_bytes(settings, self.topic)
        self.limit = limit_for(DEADLETTER_PRODUCER_MAX, topic_max)
        self.sender = Sender(
            settings,
            **{
                "message.timeout.ms": 0,
                "linger.ms": 5,
                # A batch of several dead letters must fit the topic as one message does.
                "message.max.bytes": DEADLETTER_PRODUCER_MAX,
                "batch.size": max(self.limit, 1),
            },
        )
        self.on_truncated = on_truncated

    def send(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """Queue a dead letter: the original (`headers` ending with valueloop's own), or a
        truncated copy when it is too large to send (see `fit`)."""
        names = [k for k, _ in headers]
        split = len(names) - names[::-1].index(FIRST_OWN) - 1 if FIRST_OWN in names else len(names)
        original, ours = headers[:split], headers[split:]
        letter = fit(key, value, original, ours, self.limit)
        if letter.truncated:
            self.on_truncated()
        self.sender.send(
            self.topic, letter.value, letter.key, list(letter.headers)
        )  # invariant type

    async def deliver(self, timeout: float = 5.0) -> bool:
        """Whether every dead letter queued so far is in Kafka (waits up to `timeout`)."""
        return await asyncio.to_thread(self.sender.drain, timeout) == 0


class Forwarder:
    """Sends releases to their product's partition (the product-releases topic, keyed by product).

    confluent-kafka, like the dead letters and like valueloop's producers: librdkafka's
    partitioner puts a release keyed "shop" on the partition where samples keyed "shop" are, when
    those were produced with librdkafka's default partitioner too (see README, "Products").
    Messages never time out; the release stays unacked until `deliver` sees them delivered.
    """

    def __init__(self, settings: Settings) -> None:
        from stream_app.producer import Sender  # confluent-kafka is only needed by a worker

        self.topic = settings.topic_product_releases
        self.sender = Sender(settings, **{"message.timeout.ms": 0, "linger.ms": 5})

    def send(self, product: str, value: bytes) -> None:
        """Queue a release (its CDEvent) for the partition of `product`."""
        self.sender.send(self.topic, value, product.encode())

    async def deliver(self, timeout: float = 5.0) -> bool:
        """Whether every release queued so far is in Kafka (waits up to `timeout`)."""
        return await asyncio.to_thread(self.sender.drain, timeout) == 0


@dataclass
class Checkpoint:
    """Serialises batches with checkpoints and holds the processed, not yet acked events."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: list[tuple[Any, list[Any]]] = field(default_factory=list)  # (stream, events)
    deadletters: DeadLetters | None = None
    forwarder: Forwarder | None = None

    async def run(self, app: faust.App, write_snapshots: Callable[[], object]) -> None:
        """Deliver outputs, hand snapshots to the producer, then ack what they cover."""
        async with self.lock:
            await app.producer.flush()  # the verdicts of processed events are in Kafka
            if self.deadletters is not None and not await self.deadletters.deliver():
                log.warning("dead letters not delivered yet (is the broker away?): input unacked")
                return
            if self.forwarder is not None and not await self.forwarder.deliver():
                log.warning("forwarded releases not delivered yet (is the broker away?): unacked")
                return
            write_snapshots()  # faust flushes the producer again before it commits offsets
            pending, self.pending = self.pending, []
            for stream, events in pending:
                for event in events:
                    await stream.ack(event)


@dataclass
class BatchRunner:
    """Decodes and applies one batch of input events (no awaits: a checkpoint sees all or none).

    Edges: `handle` is the core; `impact` and `ledger` are where verdicts and ledger entries go
    (returned as sends for the caller to make); `deadletter` queues a dead letter (key, value,
    headers); `untrack` tells the consumer a message will never be acked.
    """

    handle: Handler
    metrics: Metrics
    role_of_topic: Mapping[str, Role]
    impact: Any
    ledger: Any
    deadletter: Callable[[bytes | None, bytes, list[tuple[str, bytes]]], None]
    max_bytes: int
    untrack: Callable[[Any], None] = lambda _msg: None
    forward: Callable[[str, bytes], None] | None = None  # (product, release bytes)
    # Why an event's Kafka key puts it on the wrong partition (a product-level sample not keyed
    # by its product), or None.
    wrong_key: Callable[[Decoded, bytes | None], str | None] | None = None
    # Metric labels of topics whose role is not their label (forwarded releases).
    labels: Mapping[str, str] = field(default_factory=dict)

    def __call__(
        self, events: list[Any], assigned: Container[Any], generation: int
    ) -> tuple[list[Send], list[Any]]:
        """What to send, and the events to ack at the next checkpoint: every event except those
        fetched under an earlier assignment (not `generation`, or not in `assigned`), which are
        neither applied nor acked."""
        metrics, impact, ledger = self.metrics, self.impact, self.ledger
        sends: list[Send] = []
        done: list[Any] = []
        outcomes: Counter[str] = Counter()
        accepted: Counter[str] = Counter()
        stale = 0
        for event in events:
            msg = event.message
            if msg.generation_id != generation or msg.tp not in assigned:
                # Fetched under an earlier assignment and still buffered: neither applied nor
                # acked. Every rebalance rewinds the partitions to their committed offset (see
                # `rewind_uncommitted`), so its owner (maybe this worker again) reads it again in
                # order; applying it now could leave a hole before it that the offset check would
                # later take for a replay, and acking it could commit past unapplied input.
                stale += 1
                self.untrack(msg)
                continue
            done.append(event)
            role = self.role_of_topic[msg.topic]
            label = self.labels.get(msg.topic, role)
            decoded = decode(
                role, msg.value, header_list(msg.headers), max_bytes=self.max_bytes, key=msg.key
            )
            if isinstance(decoded, Rejected):
                reason, detail = decoded.reason, decoded.detail
            elif self.wrong_key is not None and (why := self.wrong_key(decoded, msg.key)):
                reason, detail = "wrong-key", why
            else:
                step = self.handle(decoded, msg.topic, msg.partition, msg.offset)
                if step is None:
                    metrics.replayed_skipped.inc()
                    continue
                if role == "telemetry":
                    outcomes[step.outcome] += 1
                if not step.rejected:
                    accepted[label] += 1
                    if step.forward and self.forward is not None:
                        value = encode(decoded)
                        for product in step.forward:
                            self.forward(product, value)
                    for rec in step.records:
                        sends.append((impact, rec.service.encode(), encode_verdict(rec), None))
                        metrics.observe_verdict(rec)
                    for entry in step.ledger:
                        sends.append((ledger, entry.service.encode(), encode_ledger(entry), None))
                        kind = "release" if entry.item_id is None else "item"
                        metrics.ledger_published.labels(kind).inc()
                    continue
                reason, detail = step.outcome, f"the core refused the {role} event: {step.outcome}"
            headers = deadletter_headers(msg, role, reason, detail)
            self.deadletter(msg.key, msg.value or b"", headers)
            metrics.rejected(label, reason)
        for outcome, n in outcomes.items():
            metrics.samples.labels(outcome).inc(n)
        for name, n in accepted.items():
            metrics.accepted(name, n)
        if stale:
            metrics.stale_skipped.inc(stale)
            log.info("skipped %d events fetched before the last rebalance (read again)", stale)
        return sends, done


def register_intake(
    app: faust.App,
    settings: Settings,
    metrics: Metrics,
    handle: Handler,
    checkpoint: Checkpoint,
    forward_releases: bool = False,
    wrong_key: Callable[[Decoded, bytes | None], str | None] | None = None,
) -> None:
    """Register the input agents: decode -> core (`handle`) -> emit verdicts / dead letters."""
    names = settings.topic_names()
    deadletters = DeadLetters(settings, on_truncated=metrics.deadletter_truncated.inc)
    checkpoint.deadletters = deadletters
    forwarder = Forwarder(settings) if forward_releases else None
    checkpoint.forwarder = forwarder
    deadletter_topic = app.topic(settings.topic_deadletter, partitions=settings.topic_partitions)

    @app.task
    async def declare_deadletter_topic() -> None:
        # librdkafka does not create topics: make sure it exists as faust does for its own.
        try:
            await deadletter_topic.maybe_declare()
        except Exception as exc:  # e.g. no right to create topics: it has to exist already
            log.warning("could not declare %s: %r", settings.topic_deadletter, exc)

    def untrack(msg: Any) -> None:
        """Stop faust from waiting for the ack of a message that will never be acked."""
        unacked = getattr(app.consumer, "_unacked_messages", None)
        if unacked is not None:
            unacked.discard(msg)

    role_of_topic: dict[str, Role] = {names[r]: r for _, roles in AGENT_ROLES for r in roles}
    if forward_releases:
        # Releases forwarded to their product's partition decode as releases.
        role_of_topic[settings.topic_product_releases] = "deployments"
    run_batch = BatchRunner(
        handle,
        metrics,
        role_of_topic,
        impact=app.topic(settings.topic_impact, partitions=settings.topic_partitions),
        ledger=app.topic(settings.topic_ledger, partitions=settings.topic_partitions),
        deadletter=deadletters.send,
        max_bytes=settings.max_message_bytes,
        untrack=untrack,
        forward=forwarder.send if forwarder is not None else None,
        wrong_key=wrong_key,
        labels={settings.topic_product_releases: "product-releases"},
    )

    stall_key = settings.test_stall_key.encode() if settings.test_stall_key else None

    async def process(stream: faust.StreamT[Any]) -> None:
        # noack_take is faust's take() without the ack: its stub in StreamT is missing.
        batches = stream.noack_take(BATCH_MAX, within=BATCH_WITHIN)  # type: ignore[attr-defined]
        async for batch in batches:
            events = list(batch)
            async with checkpoint.lock:
                if stall_key is not None and any(e.message.key == stall_key for e in events):
                    await stall_for_tests(events)
                assigned = app.consumer.assignment()
                sends, done = run_batch(events, assigned, app.consumer_generation_id)
                for topic, key, value, headers in sends:
                    await topic.send(key=key, value=value, headers=headers)
                checkpoint.pending.append((stream, done))
            # No reference to a stale (never acked) event may outlive the batch: faust's
            # rebalance waits until every message it delivered is acked or garbage.
            del batch, events

    for agent_name, roles in AGENT_ROLES:
        topics = [names[r] for r in roles]
        if forward_releases and "telemetry" in roles:
            # Co-partitioned with telemetry: a product's releases meet its samples here.
            topics.append(settings.topic_product_releases)
        source = app.topic(*topics, partitions=settings.topic_partitions)
        app.agent(source, name=agent_name)(process)


async def stall_for_tests(events: list[Any]) -> None:
    """Block the batch step for good (VALUELOOP_TEST_STALL_KEY, tests only): an intake stuck on
    an await, holding the checkpoint lock, as a hung send or a bug would leave it."""
    log.warning("test hook: the batch step blocks for good (%d events)", len(events))
    await asyncio.Event().wait()


async def rewind_uncommitted(app: faust.App, topics: set[str]) -> int:
    """Seek the assigned input partitions the group never committed to their earliest offset.

    Called when a rebalance completes, before input resumes. faust seeks the partitions to their
    committed offsets, but aiokafka's `seek_to_committed` leaves a partition without a committed
    offset (or at 0) where its fetcher was: input that was in flight across the rebalance (and
    skipped as stale by the intake) would never be read again. Returns how many were rewound.
    """
    consumer: Any = app.consumer  # ConsumerT lacks seek_to_committed (faust.transport has it)
    committed = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if tp.topic in topics and not offset]
    if not fresh:
        return 0
    earliest = await consumer.earliest_offsets(*fresh)
    await consumer.seek_wait({tp: earliest.get(tp, 0) for tp in fresh})
    return len(fresh)
