"""Kafka security settings reach confluent-kafka and faust/aiokafka alike; secrets stay hidden."""

from __future__ import annotations

import shutil
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from stream_app.app import build_app, faust_broker_credentials
from stream_app.broker import (
    _sasl_state,
    ensure_broker,
    find_repo_root,
    render_sasl_overlay,
    start_broker,
)
from stream_app.errors import BrokerError
from stream_app.preflight import AUTH, TLS, UNREACHABLE, Probe, classify, explain
from stream_app.settings import Settings

PASSWORD = "pw-7f3a9c1e-secret"
KEY_PASSWORD = "key-5b2d8e4f-secret"


def _sasl(**extra: Any) -> Settings:
    fields: dict[str, Any] = {
        "kafka_bootstrap_servers": "127.0.0.1:9",
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": "alice",
        "kafka_sasl_password": PASSWORD,
    }
    return Settings(**{**fields, **extra})


def _aiokafka_auth(settings: Settings) -> dict[str, Any]:
    """What faust passes to every aiokafka consumer and producer it builds for this app."""
    app = build_app(settings)
    consumer_auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    producer_auth = dict(app.producer._settings_auth())
    assert consumer_auth == producer_auth
    return consumer_auth


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed client certificate and its private key, encrypted with KEY_PASSWORD."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "client.pem", d / "client.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=valueloop-test",
            "-passout", f"pass:{KEY_PASSWORD}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_sasl_settings_reach_confluent_kafka() -> None:
    conf = _sasl().kafka_client_config()
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "alice",
        "sasl.password": PASSWORD,
    }


def test_sasl_settings_reach_faust_consumer_and_producer() -> None:
    auth = _aiokafka_auth(_sasl(kafka_sasl_mechanism="SCRAM-SHA-512"))
    assert auth == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
        "ssl_context": None,
    }


def test_plaintext_gives_faust_no_credentials() -> None:
    s = Settings(kafka_bootstrap_servers="127.0.0.1:9")
    assert faust_broker_credentials(s) is None
    assert s.kafka_client_config()["security.protocol"] == "PLAINTEXT"
    assert _aiokafka_auth(s) == {"security_protocol": "PLAINTEXT"}


def test_tls_client_certificate_reaches_both_clients(client_cert: tuple[Path, Path]) -> None:
    cert, key = client_cert
    s = _sasl(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=cert,
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
        kafka_ssl_key_password=KEY_PASSWORD,
    )
    conf = s.kafka_client_config()
    assert conf["ssl.ca.location"] == str(cert)
    assert conf["ssl.certificate.location"] == str(cert)
    assert conf["ssl.key.location"] == str(key)
    assert conf["ssl.key.password"] == KEY_PASSWORD
    Producer(conf).flush(0)  # librdkafka loads (and decrypts) the key when the client is made

    auth = _aiokafka_auth(s)
    assert auth["security_protocol"] == "SASL_SSL"
    ctx = auth["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.get_ca_certs()  # the CA file was loaded


def test_wrong_key_password_is_refused_by_both_clients(client_cert: tuple[Path, Path]) -> None:
    cert, key = client_cert
    s = Settings(
        kafka_bootstrap_servers="127.0.0.1:9",
        kafka_security_protocol="SSL",
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
        kafka_ssl_key_password="not-the-key-password",
    )
    with pytest.raises(KafkaException):
        Producer(s.kafka_client_config())
    with pytest.raises(ssl.SSLError):
        faust_broker_credentials(s)


def test_sasl_needs_mechanism_username_and_password_and_never_echoes_them() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_username="alice",
            kafka_sasl_password=PASSWORD,
        )
    message = str(info.value)
    assert "VALUELOOP_KAFKA_SASL_MECHANISM" in message
    assert PASSWORD not in message
    with pytest.raises(ValidationError):
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256")
    with pytest.raises(ValidationError):
        Settings(kafka_security_protocol="TLS")  # a typo fails at start-up


def test_settings_hide_secrets_in_repr_str_and_json() -> None:
    s = _sasl(kafka_ssl_key_password=KEY_PASSWORD)
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert PASSWORD not in text
        assert KEY_PASSWORD not in text
    assert "alice" in repr(s)
    assert "alice" in repr(faust_broker_credentials(s))
    assert PASSWORD not in repr(faust_broker_credentials(s))


def test_preflight_classifies_librdkafka_errors() -> None:
    assert classify(KafkaError._AUTHENTICATION) == AUTH
    assert classify(KafkaError.SASL_AUTHENTICATION_FAILED) == AUTH
    assert classify(KafkaError._SSL) == TLS
    assert classify(KafkaError._TRANSPORT) == UNREACHABLE
    assert classify(KafkaError._ALL_BROKERS_DOWN) == UNREACHABLE


def test_preflight_messages_name_the_settings_and_hide_the_password() -> None:
    s = _sasl()
    auth = explain(s, Probe(False, AUTH, f"SASL authentication error (password {PASSWORD})"))
    assert auth.startswith("Kafka authentication failed for user 'alice' (SASL_PLAINTEXT SCRAM-SHA")
    assert "VALUELOOP_KAFKA_SASL_USERNAME/PASSWORD" in auth
    assert PASSWORD not in auth
    down = explain(s, Probe(False, UNREACHABLE, "Connection refused"), timeout=3)
    assert "127.0.0.1:9 did not answer within 3 s" in down
    assert "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS" in down
    tls = explain(s, Probe(False, TLS, "certificate verify failed"))
    assert "VALUELOOP_KAFKA_SSL_CAFILE" in tls


def test_metrics_server_binds_the_configured_host() -> None:
    app = build_app(Settings(kafka_bootstrap_servers="127.0.0.1:9", metrics_host="127.0.0.2"))
    assert app.conf.web_bind == "127.0.0.2"
    assert app.conf.web_host == "127.0.0.2"


def test_sasl_overlay_replaces_the_listeners() -> None:
    template = (find_repo_root() / "deploy" / "kafka" / "sasl.properties.template").read_text()
    text = render_sasl_overlay(
        template,
        port=9092,
        controller_port=9093,
        mechanism="SCRAM-SHA-512",
        broker_user="valueloop-broker",
        broker_password="b-pw",
    )
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "SASL_PLAINTEXT://127.0.0.1:9092"
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
    )
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    jaas = props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert 'username="valueloop-broker" password="b-pw";' in jaas


@pytest.mark.parametrize(
    ("users", "mechanism"),
    [
        ({"alice": "has,comma"}, "SCRAM-SHA-256"),
        ({"bad name": "pw"}, "SCRAM-SHA-256"),
        ({"valueloop-broker": "pw"}, "SCRAM-SHA-256"),
        ({"alice": "pw"}, "PLAIN"),
    ],
)
def test_local_broker_refuses_unusable_scram_users(
    tmp_path: Path, users: dict[str, str], mechanism: str
) -> None:
    with pytest.raises(BrokerError) as info:
        start_broker(tmp_path, sasl_users=users, sasl_mechanism=mechanism)
    assert "has,comma" not in str(info.value)
    assert not (tmp_path / "broker").exists()  # refused before anything was made


def test_local_broker_serves_only_plaintext_or_sasl_plaintext_scram(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="local broker serves"):
        ensure_broker(Settings(data_dir=tmp_path, kafka_security_protocol="SSL"))
    with pytest.raises(BrokerError, match="local broker serves"):
        ensure_broker(
            _sasl(kafka_bootstrap_servers=None, data_dir=tmp_path, kafka_sasl_mechanism="PLAIN")
        )


def test_a_data_dir_keeps_the_scram_users_it_was_formatted_with(tmp_path: Path) -> None:
    first = _sasl_state(tmp_path, {"alice": PASSWORD, "bob": PASSWORD}, "SCRAM-SHA-256")
    assert first["broker_user"] == "valueloop-broker" and len(first["broker_password"]) >= 24
    assert stat.S_IMODE((tmp_path / "sasl.json").stat().st_mode) == 0o600
    assert PASSWORD not in (tmp_path / "sasl.json").read_text()  # users' passwords: not kept
    (tmp_path / "kraft").mkdir()
    (tmp_path / "kraft" / "meta.properties").write_text("cluster.id=x\n")
    # Formatted: the broker's login is kept; the requested users must be among the formatted ones.
    assert _sasl_state(tmp_path, {"bob": "pw"}, "SCRAM-SHA-256") == first
    with pytest.raises(BrokerError, match="formatted with SCRAM-SHA-256 users"):
        _sasl_state(tmp_path, {"carol": "pw"}, "SCRAM-SHA-256")
    with pytest.raises(BrokerError):
        _sasl_state(tmp_path, {"alice": "pw"}, "SCRAM-SHA-512")
    (tmp_path / "sasl.json").unlink()
    with pytest.raises(BrokerError, match="formatted without SCRAM users"):
        _sasl_state(tmp_path, {"alice": "pw"}, "SCRAM-SHA-256")
