"""One frozen settings object, read from VALUELOOP_* environment variables and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from stream_app.core.guard import Limits

INPUT_TOPIC_KEYS = ("deployments", "telemetry", "workflow", "incidents")


class Settings(BaseSettings):
    """Everything valueloop can be configured with.

    Every field is read from ``VALUELOOP_<FIELD>`` (upper case),
    e.g. ``VALUELOOP_KAFKA_BOOTSTRAP_SERVERS``.
    """

    # Validation errors never echo their input: it can hold the SASL or key password.
    model_config = SettingsConfigDict(
        env_prefix="VALUELOOP_", frozen=True, extra="forbid", hide_input_in_errors=True
    )

    # Kafka connection
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...). Unset: the local broker.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism (required with SASL_*), e.g. SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(default=None, description="CA bundle for TLS.")
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="TLS client certificate (PEM), for brokers that require one."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of the TLS client certificate."
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted private key."
    )

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
    topic_otlp: str = Field(
        default="vsm.otlp",
        description="Input: OTLP metrics (ExportMetricsServiceRequest, otlp_proto or otlp_json) "
        "from the OpenTelemetry Collector's Kafka exporter, any key.",
    )
    topic_product_releases: str = Field(
        default="vsm.product-releases",
        description="Internal: releases the worker forwards to their product's partition (keyed "
        "by product) when the catalog has product-level KPIs.",
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
    session_timeout_seconds: float = Field(
        default=10.0,
        ge=3.0,
        le=300.0,
        description=(
            "Consumer group session timeout: how long a crashed worker keeps its partitions before"
            " the others take them over."
        ),
    )
    stall_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "An input partition whose processing makes no progress this long while it has lag"
            " stalls: /health answers 503 and valueloop_intake_stalled shows it."
        ),
    )
    test_stall_key: str | None = Field(
        default=None,
        description=(
            "Test only, never in production: the intake's batch step blocks for good when a batch"
            " holds an input message with this key (to test stall detection and shutdown)."
        ),
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
    max_otlp_message_bytes: int = Field(
        default=1000 * 1000,
        ge=512,
        le=1000 * 1000,
        description="OTLP records larger than this are dead-lettered (oversized). A Collector "
        "batch is often larger than an event: the default is Kafka's own record limit.",
    )
    # Input guard (stream_app/core/guard.py): input beyond these is dead-lettered with a reason.
    max_services: int = Field(
        default=1000,
        ge=1,
        description="Distinct services kept (state, metric series); more: too-many-services.",
    )
    max_kpis_per_service: int = Field(
        default=64,
        ge=1,
        description="Distinct KPI sample streams per service; more: too-many-kpis.",
    )
    max_label_values: int | None = Field(
        default=None,
        ge=1,
        description="Values of one scope label per KPI stream of a service; more: "
        "too-many-label-values. Unset: the catalog's [scope] max_values.",
    )
    known_services: str | None = Field(
        default=None,
        description="Comma-separated service names; when set, events of any other service are "
        "dead-lettered (unknown-service). Unset: any service.",
    )
    min_event_time: float = Field(
        default=946684800.0,
        description="Events before this POSIX time are dead-lettered (time-in-past). "
        "Default 2000-01-01.",
    )
    max_future_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="Events dated more than this ahead of the wall clock are dead-lettered "
        "(time-in-future).",
    )
    max_sample_ids: int = Field(
        default=100_000,
        ge=1,
        description="Sample ids remembered per service to drop producer retries (duplicate).",
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
    cost_per_hour: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Money per active engineering hour: the value ledger's cost in money. Unset: "
        "cost in hours only.",
    )
    rework_window_hours: float = Field(
        default=24.0,
        gt=0,
        allow_inf_nan=False,
        description="DORA deployment rework rate: a deployment within this many hours after a "
        "production failure of its service (incident, degraded verdict) is rework.",
    )
    currency: str = Field(
        default="",
        max_length=8,
        description="Currency of cost_per_hour (and of revenue KPIs), e.g. EUR; shown only.",
    )

    # HTTP CloudEvents sink (`valueloop sink`)
    sink_host: str = Field(
        default="127.0.0.1",
        description="Address the HTTP CloudEvents sink binds (beyond loopback it needs a token).",
    )
    sink_port: int = Field(default=9109, ge=0, le=65535, description="Port of the sink.")
    sink_token: SecretStr | None = Field(
        default=None,
        description="Bearer token POST /events requires (Authorization: Bearer ...). Unset: no "
        "token, allowed only on a loopback address.",
    )
    sink_max_request_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Larger request bodies are refused (413)."
    )
    sink_delivery_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Events not delivered to Kafka within this are answered 503.",
    )

    # Local broker
    broker_port: int = Field(
        default=0, ge=0, le=65535, description="Local broker port; 0 picks a free one."
    )
    broker_heap: str = Field(default="512m", description="Local broker maximum heap (-Xmx).")

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> Self:
        # Else librdkafka would fall back to GSSAPI and aiokafka to PLAIN: fail at start-up instead.
        if self.kafka_security_protocol.startswith("SASL_"):
            missing = [
                f"VALUELOOP_KAFKA_SASL_{name.upper()}"
                for name, value in (
                    ("mechanism", self.kafka_sasl_mechanism),
                    ("username", self.kafka_sasl_username),
                    ("password", self.kafka_sasl_password),
                )
                if not value
            ]
            if missing:
                raise ValueError(
                    f"VALUELOOP_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                    + ", ".join(missing)
                )
        return self

    def guard_limits(self) -> Limits:
        """The input guard's limits (stream_app.core.guard.Limits) from these settings."""
        from stream_app.core.guard import Limits

        known = None
        if self.known_services is not None:
            known = frozenset(s.strip() for s in self.known_services.split(",") if s.strip())
        return Limits(
            max_services=self.max_services,
            max_kpis_per_service=self.max_kpis_per_service,
            max_label_values=self.max_label_values,
            known_services=known,
            min_event_time=self.min_event_time,
            max_future_seconds=self.max_future_seconds,
            max_ids_per_service=self.max_sample_ids,
        )

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
            "otlp": self.topic_otlp,
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
        if self.kafka_ssl_certfile is not None:
            conf["ssl.certificate.location"] = str(self.kafka_ssl_certfile)
        if self.kafka_ssl_keyfile is not None:
            conf["ssl.key.location"] = str(self.kafka_ssl_keyfile)
        if self.kafka_ssl_key_password is not None:
            conf["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        return conf
