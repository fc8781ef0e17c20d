"""Fail-fast check of the Kafka address, credentials and TLS settings (a confluent-kafka edge).

Left to faust, a refused login ends in a 60-line traceback whose last word is aiokafka's "Unable
to bootstrap". `check_kafka` asks the cluster once, with the worker's own settings, before faust
starts, and turns the answer into one line naming the settings to check. No message contains a
password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stream_app.errors import KafkaAccessError
from stream_app.settings import Settings

AUTH = "authentication"
TLS = "tls"
UNREACHABLE = "unreachable"
CONFIG = "config"


@dataclass(frozen=True, slots=True)
class Probe:
    """What the cluster said to one metadata request.

    Attributes:
        ok: the cluster answered with at least one broker.
        problem: None when ok, else one of AUTH, TLS, UNREACHABLE, CONFIG.
        detail: librdkafka's description of the last error (never holds a password).
    """

    ok: bool
    problem: str | None = None
    detail: str = ""


def classify(code: int) -> str:
    """Map a librdkafka error code to AUTH, TLS or UNREACHABLE."""
    from confluent_kafka import KafkaError

    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        return AUTH
    if code == KafkaError._SSL:
        return TLS
    return UNREACHABLE


def probe(config: Mapping[str, Any], timeout: float = 10.0) -> Probe:
    """Ask the cluster for its metadata with `config`; stop early on a login or TLS failure.

    Args:
        config: librdkafka client settings (bootstrap.servers, security.*, sasl.*, ssl.*).
        timeout: seconds to wait for an answer from an unreachable or silent cluster.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[KafkaError] = []
    # librdkafka's log lines go to a private logger instead of stderr: the outcome is reported
    # once, by the caller. Its last warning is the best description of a dropped connection
    # (e.g. a PLAINTEXT client on a SASL listener), where error_cb only says "brokers are down".
    lines = _Lines()
    rdkafka_log = logging.Logger("valueloop.preflight.librdkafka")
    rdkafka_log.addHandler(lines)
    conf: dict[str, Any] = {**config, "error_cb": errors.append, "logger": rdkafka_log}
    try:
        admin = AdminClient(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        return Probe(False, CONFIG, str(exc))
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            # Short slices, so that a refused login reported through error_cb ends the wait.
            metadata = admin.list_topics(timeout=max(0.2, min(1.0, remaining)))
            if metadata.brokers:
                return Probe(True)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError):
                errors.append(err)
        admin.poll(0.05)  # serves error_cb
        for err in errors:
            if classify(err.code()) in (AUTH, TLS):
                return Probe(False, classify(err.code()), err.str())
        if remaining <= 0:
            last = lines.last or (errors[-1].str() if errors else "no answer")
            return Probe(False, UNREACHABLE, last)


class _Lines(logging.Handler):
    """Keeps the last warning-or-worse line librdkafka logged (without its thread prefix)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage().rpartition("]: ")[2]


def check_kafka(settings: Settings, timeout: float = 10.0) -> None:
    """Make sure the configured cluster answers and accepts the configured credentials.

    Args:
        settings: with ``kafka_bootstrap_servers`` resolved.
        timeout: seconds to wait for an unreachable cluster; a refused login ends at once.

    Raises:
        KafkaAccessError: the cluster is unreachable or refuses the login or TLS handshake; the
            message names the settings to check and never contains a password.
    """
    result = probe(settings.kafka_client_config(), timeout)
    if result.ok:
        return
    raise KafkaAccessError(explain(settings, result, timeout))


def explain(settings: Settings, result: Probe, timeout: float = 10.0) -> str:
    """One line saying what failed and which VALUELOOP_* settings to check (no secrets)."""
    where = settings.kafka_bootstrap_servers
    proto = settings.kafka_security_protocol
    detail = redact(result.detail, settings)
    if result.problem == AUTH:
        return (
            f"Kafka authentication failed for user {settings.kafka_sasl_username!r} "
            f"({proto} {settings.kafka_sasl_mechanism}) at {where}: check "
            f"VALUELOOP_KAFKA_SASL_USERNAME/PASSWORD and VALUELOOP_KAFKA_SASL_MECHANISM "
            f"(broker said: {detail})"
        )
    if result.problem == TLS:
        return (
            f"TLS handshake with Kafka at {where} failed ({proto}): check "
            f"VALUELOOP_KAFKA_SSL_CAFILE/CERTFILE/KEYFILE ({detail})"
        )
    if result.problem == CONFIG:
        return f"invalid Kafka client settings: {detail}"
    return (
        f"Kafka at {where} did not answer within {timeout:g} s ({detail}): check "
        f"VALUELOOP_KAFKA_BOOTSTRAP_SERVERS and VALUELOOP_KAFKA_SECURITY_PROTOCOL (now {proto})"
    )


def redact(text: str, settings: Settings) -> str:
    """`text` with every configured secret replaced by ``***`` (belt and braces)."""
    for secret in (settings.kafka_sasl_password, settings.kafka_ssl_key_password):
        value = secret.get_secret_value() if secret is not None else ""
        if len(value) >= 4:  # shorter ones would mangle ordinary words
            text = text.replace(value, "***")
    return text
