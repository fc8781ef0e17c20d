"""One frozen settings object, read from VALUELOOP_* environment variables and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

INPUT_TOPIC_KEYS = ("deployments", "telemetry", "workflow", "incidents")


class Settings(BaseSettings):
    """Everything valueloop can be configured with.

    Every field is read from ``VALUELOOP_<FIELD>`` (upper case),
    e.g. ``VALUELOOP_KAFKA_BOOTSTRAP_SERVERS``.
    """

    model_config = SettingsConfigDict(env_prefix="VALUELOOP_", frozen=True, extra="forbid")

    # Kafka connection
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...). Unset: the local broker.",
    )
    kafka_security_protocol: str = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None, description="SASL mechanism, e.g. SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(default=None, description="CA bundle for TLS.")

    # Topics
    topic_deployments: str = Field(
        default="vsm.deployments", description="Input: releases (CDEvents, flag changes)."
    )
    topic_telemetry: str = Field(default="vsm.telemetry", description="Input: KPI samples.")
    topic_workflow: str = Field(
        default="vsm.workflow", description="Input: work items and CI/CD stages."
    )
    topic_incidents: str = Field(default="vsm.incidents", description="Input: incidents.")
    topic_impact: str = Field(default="vsm.impact", description="Output: impact verdicts.")
    topic_deadletter: str = Field(
        default="vsm.deadletter", description="Output: rejected messages."
    )
    topic_ledger: str = Field(
        default="vsm.ledger", description="Output: value-ledger entries (cost and delivered value)."
    )
    topic_partitions: int = Field(
        default=4, ge=1, description="Partitions of the input and output topics."
    )
    topic_replication: int = Field(
        default=1, ge=1, description="Replication factor of created topics."
    )

    # Worker
    app_id: str = Field(
        default="valueloop", description="Consumer group / faust app id (permanent)."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the /metrics and /health server binds."
    )
    metrics_port: int = Field(
        default=9108, ge=0, le=65535, description="Port of /metrics and /health."
    )
    data_dir: Path = Field(
        default=Path(".valueloop"),
        description="Local state: broker data, pid files, worker tables.",
    )
    max_message_bytes: int = Field(
        default=256 * 1024, ge=512, description="Messages larger than this are dead-lettered."
    )
    kpis_file: Path | None = Field(
        default=None, description="KPI catalog (TOML). Unset: the bundled example."
    )

    valuestream_file: Path | None = Field(
        default=None, description="Value-stream definition (TOML). Unset: the bundled default."
    )
    features_file: Path | None = Field(
        default=None,
        description="Features file (TOML): the KPI move a release, flag or work item should bring.",
    )
    report_period_days: float = Field(
        default=7.0, gt=0, description="Period of flow and DORA reports (event time, days)."
    )

    # Local broker
    broker_port: int = Field(
        default=0, ge=0, le=65535, description="Local broker port; 0 picks a free one."
    )
    broker_heap: str = Field(default="512m", description="Local broker maximum heap (-Xmx).")

    def topic_names(self) -> dict[str, str]:
        """Map topic role -> topic name."""
        return {
            "deployments": self.topic_deployments,
            "telemetry": self.topic_telemetry,
            "workflow": self.topic_workflow,
            "incidents": self.topic_incidents,
            "impact": self.topic_impact,
            "deadletter": self.topic_deadletter,
            "ledger": self.topic_ledger,
        }

    def kafka_client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka-style connection settings (bootstrap, security) for confluent-kafka."""
        if not self.kafka_bootstrap_servers:
            raise ValueError("kafka_bootstrap_servers is not set")
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile is not None:
            conf["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        return conf
