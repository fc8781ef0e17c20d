"""Builds the faust App from Settings; nothing else."""

from __future__ import annotations

from typing import Any

import faust

from stream_app.settings import Settings


def faust_broker_credentials(settings: Settings) -> Any:
    """Faust/aiokafka credentials equivalent to the confluent-kafka security settings, or None."""
    proto = settings.kafka_security_protocol.upper()
    if proto == "PLAINTEXT":
        return None
    ssl_context = None
    if proto in ("SSL", "SASL_SSL"):
        import ssl

        ssl_context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
    if proto.startswith("SASL"):
        password = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
        )
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=password,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


def build_app(settings: Settings) -> faust.App:
    """The faust App for `settings` (bootstrap servers must be resolved already)."""
    if not settings.kafka_bootstrap_servers:
        raise ValueError("kafka_bootstrap_servers is not set")
    brokers = [f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap_servers.split(",")]
    return faust.App(
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
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        logging_config=None,
    )
