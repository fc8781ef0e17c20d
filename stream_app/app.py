"""Builds the faust App from Settings; nothing else."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import faust.types.auth

from stream_app.settings import Settings


def faust_broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust/aiokafka credentials equal to `Settings.kafka_client_config` (confluent-kafka).

    Faust hands them to every aiokafka client it makes (consumer, producer, topic creation), so
    the worker authenticates exactly like `valueloop emit`, `topics ensure` and the simulator.
    Returns None for PLAINTEXT.
    """
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    ssl_context = tls_context(settings) if proto in ("SSL", "SASL_SSL") else None
    if proto == "SSL":
        return faust.SSLCredentials(ssl_context)
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password is not None else None,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl_context,
    )


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The client TLS context: CA bundle (else the system's), optional client certificate and key.

    Host names are verified, as librdkafka does by default.
    """
    ctx = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    if settings.kafka_ssl_certfile is not None:
        key_password = settings.kafka_ssl_key_password
        ctx.load_cert_chain(
            str(settings.kafka_ssl_certfile),
            str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            key_password.get_secret_value() if key_password is not None else None,
        )
    return ctx


class App(faust.App):
    """faust's App, with one hook into its stop: `before_stop_drain` runs when the worker stops,
    after the fetcher stopped and before faust waits for every delivered message to be acked.

    faust waits for those acks without a time limit (`Consumer.wait_empty`). The intake acks
    late, at its checkpoints, and a stuck batch step never acks: the hook runs the last
    checkpoint (bounded in time) and tells the consumer to stop waiting for the rest, which is
    not committed and is read again by the partitions' next owner.
    """

    before_stop_drain: Callable[[], Awaitable[None]] | None = None

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        # Also called at each rebalance, where the checkpoint timer still runs: stop only.
        if self.should_stop and self.before_stop_drain is not None:
            await self.before_stop_drain()
        await super()._consumer_wait_empty(consumer, logger)


def build_app(settings: Settings) -> App:
    """The faust App for `settings` (bootstrap servers must be resolved already)."""
    if not settings.kafka_bootstrap_servers:
        raise ValueError("kafka_bootstrap_servers is not set")
    brokers = [f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap_servers.split(",")]
    return App(
        settings.app_id,
        broker=brokers,
        broker_credentials=faust_broker_credentials(settings),
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        web_enabled=True,
        web_bind=settings.metrics_host,
        web_host=settings.metrics_host,
        web_port=settings.metrics_port,
        web_in_thread=False,
        datadir=str(settings.data_dir / "worker"),
        # Commit often: a crash replays at most this much input.
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_seconds / 4),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        logging_config=None,
    )
