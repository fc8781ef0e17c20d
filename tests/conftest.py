"""Fixtures shared by every test folder: the real Kafka broker and per-test unique topic names."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from stream_app.broker import BrokerInfo, start_broker, stop_broker
from stream_app.settings import INPUT_TOPIC_KEYS

BOOTSTRAP_ENV = "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS"


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo | None]:
    """The broker this test session started, or None when the environment names a cluster.

    The broker runs from a temporary data dir, dies with the test process if that is killed,
    and is stopped by pid when the session ends (also when tests failed).
    """
    if os.environ.get(BOOTSTRAP_ENV):
        yield None
        return
    data_dir = tmp_path_factory.mktemp("kafka")
    info = start_broker(data_dir, heap="512m", timeout=120, die_with_parent=True)
    try:
        yield info
    finally:
        stop_broker(data_dir)


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: BrokerInfo | None) -> str:
    """Bootstrap servers: ``$VALUELOOP_KAFKA_BOOTSTRAP_SERVERS``, else the session broker's."""
    if local_broker is None:
        return os.environ[BOOTSTRAP_ENV]
    return local_broker.bootstrap


@dataclass(frozen=True)
class TopicNames:
    """Topic names no other test (or earlier run against the same cluster) uses.

    ``names("deployments")`` gives ``<prefix>.deployments``; ``prefix`` also suits a group id.
    """

    prefix: str

    def __call__(self, role: str) -> str:
        return f"{self.prefix}.{role}"

    def settings_fields(self) -> dict[str, str]:
        """``Settings`` keyword arguments giving every topic and the app id a unique name."""
        roles = (*INPUT_TOPIC_KEYS, "impact", "deadletter", "ledger", "otlp")
        fields = {f"topic_{role}": self(role) for role in roles}
        fields["app_id"] = self.prefix
        return fields


@pytest.fixture
def unique_topics(request: pytest.FixtureRequest) -> TopicNames:
    """Per-test topic namer: ``t.<test name>.<random>.<role>`` (only ``[a-z0-9.-]``)."""
    test_name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:80]
    return TopicNames(prefix=f"t.{test_name}.{uuid.uuid4().hex[:8]}")
