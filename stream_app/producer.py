"""confluent-kafka edge: topic administration and reliable sends (emit, simulator, bulk)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from stream_app.errors import DeliveryError, KafkaAccessError
from stream_app.preflight import AUTH, TLS, Probe, check_kafka, classify, explain
from stream_app.settings import INPUT_TOPIC_KEYS, Settings

Header = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class TopicResult:
    """What `ensure_topics` did for one topic."""

    name: str
    role: str
    partitions: int
    created: bool


def topic_specs(settings: Settings) -> list[tuple[str, str, int]]:
    """The (role, name, partitions) of every topic valueloop uses.

    Inputs and the impact topic share one partition count so that a service's releases, KPI samples
    and verdicts are co-partitioned (all are keyed by service).
    """
    return [
        *((role, name, settings.topic_partitions) for role, name in settings.topic_names().items()),
        # Co-partitioned with the telemetry topic: a product's samples and releases meet there.
        ("product-releases", settings.topic_product_releases, settings.topic_partitions),
    ]


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[TopicResult]:
    """Create missing topics idempotently; existing topics are left as they are.

    Raises:
        KafkaAccessError: the cluster is unreachable or refuses the login (said in one line).
        DeliveryError: the cluster refused to create a topic.
    """
    check_kafka(settings, timeout=min(timeout, 10.0))
    admin = AdminClient(dict(settings.kafka_client_config()))
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise DeliveryError(
            f"cannot list topics on {settings.kafka_bootstrap_servers}: {exc}"
        ) from exc
    results: list[TopicResult] = []
    wanted: list[NewTopic] = []
    for role, name, partitions in topic_specs(settings):
        if name in existing:
            results.append(TopicResult(name, role, len(existing[name].partitions), created=False))
        else:
            wanted.append(
                NewTopic(
                    name, num_partitions=partitions, replication_factor=settings.topic_replication
                )
            )
            results.append(TopicResult(name, role, partitions, created=True))
    if wanted:
        for name, fut in admin.create_topics(wanted, operation_timeout=timeout).items():
            try:
                fut.result(timeout=timeout)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                # Another process created it between list and create: that is success.
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise DeliveryError(f"cannot create topic {name}: {exc}") from exc
    return results


def topic_max_message_bytes(settings: Settings, topic: str, timeout: float = 10.0) -> int | None:
    """The `max.message.bytes` of a topic (its own or the broker default), or None when the
    cluster does not say (no such topic yet, no right to describe it, unreachable)."""
    admin = AdminClient(dict(settings.kafka_client_config()))
    try:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
        for fut in futures.values():
            return int(fut.result(timeout=timeout)["max.message.bytes"].value)
    except (KafkaException, KeyError, ValueError, TypeError):
        return None
    return None


def input_roles() -> tuple[str, ...]:
    """Roles of the input topics, in a stable order."""
    return INPUT_TOPIC_KEYS


class Sender:
    """A confluent-kafka producer that surfaces delivery failures instead of losing messages."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        conf: dict[str, Any] = {
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
            "message.timeout.ms": 30000,
            # librdkafka retries a refused login until messages time out: notice it at once.
            "error_cb": self._on_error,
        }
        conf.update(overrides)
        self._settings = settings
        self._producer = Producer(conf)
        self._errors: list[str] = []
        self._refused: Probe | None = None
        self._closed = False
        self.delivered = 0

    def _on_error(self, err: KafkaError) -> None:
        kind = classify(err.code())
        if kind in (AUTH, TLS) and self._refused is None:
            self._refused = Probe(False, kind, err.str())

    def _raise_if_refused(self) -> None:
        if self._refused is not None:
            raise KafkaAccessError(explain(self._settings, self._refused))

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
        else:
            self.delivered += 1

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Queue one message; call `flush` to wait for delivery."""
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.1)
                self._raise_if_refused()
        self._producer.poll(0)

    def send_many(self, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Queue (key, value) pairs; returns how many were queued."""
        n = 0
        for key, value in messages:
            self.send(topic, value, key)
            n += 1
        return n

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for queued messages; returns how many are still queued.

        Unlike `flush`, running out of time is not an error (the caller tries again later).

        Raises:
            KafkaAccessError: the cluster refused the login or the TLS handshake.
            DeliveryError: a message failed for good (it is not in the queue any more).
        """
        remaining = int(self._producer.flush(max(0.0, timeout)))
        self._raise_if_refused()
        if self._errors:
            first = self._errors[0]
            raise DeliveryError(f"{len(self._errors)} message(s) not delivered: {first}")
        return remaining

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every queued message is delivered.

        Returns:
            The number of messages delivered so far.

        Raises:
            KafkaAccessError: the cluster refused the login or the TLS handshake.
            DeliveryError: a message could not be delivered, or the timeout passed first.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = self.drain(min(0.5, deadline - time.monotonic()))
            if not remaining or time.monotonic() >= deadline:
                break
        if remaining:
            raise DeliveryError(
                f"{remaining} message(s) not delivered within {timeout:g}s "
                "(is the broker reachable?)"
            )
        return self.delivered

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop the client and its threads.

        Dropping the last reference is not enough: the client holds this object's error
        callback, so the two form a cycle that lives until the garbage collector finds it, and
        meanwhile librdkafka keeps reconnecting (and logging "Connect ... failed: Connection
        refused" once the broker is gone). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._producer.flush(max(0.0, timeout)):
                self._producer.purge()  # undeliverable now: close() would wait for them forever
        finally:
            close = getattr(self._producer, "close", None)  # only recent confluent-kafka has it
            if close is not None:
                close()
            del self._producer  # older clients: the last reference goes, the handle is destroyed


class AsyncSender:
    """A confluent-kafka producer for asyncio code: `send` returns a future resolved on delivery.

    A daemon thread serves librdkafka's delivery reports and hands each result to the event loop
    of the caller, so a request handler can await delivery without blocking the loop.
    """

    def __init__(self, settings: Settings, *, timeout: float = 10.0, **overrides: Any) -> None:
        import threading

        conf: dict[str, Any] = {
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # A message not delivered within this fails its future (the caller answers 503).
            "message.timeout.ms": max(1, int(timeout * 1000)),
        }
        conf.update(overrides)
        self._producer = Producer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sink-delivery", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> asyncio.Future[tuple[str, int, int]]:
        """Queue one message; the future gives (topic, partition, offset) once Kafka has it.

        The future fails with DeliveryError when the message cannot be queued or delivered.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[str, int, int]] = loop.create_future()

        def settle(err: KafkaError | None, msg: Any) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(DeliveryError(f"not delivered to {topic}: {err.str()}"))
            else:
                fut.set_result((msg.topic(), msg.partition(), msg.offset()))

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            loop.call_soon_threadsafe(settle, err, msg)

        try:
            self._producer.produce(
                topic, value=value, key=key, headers=headers, on_delivery=on_delivery
            )
        except (BufferError, KafkaException) as exc:
            fut.set_exception(DeliveryError(f"cannot queue a message for {topic}: {exc}"))
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout`) and stop the delivery thread."""
        self._producer.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=5)
