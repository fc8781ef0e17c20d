"""The local broker is a real Kafka: clients use it, it is managed by pid, it binds loopback."""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import sys
import time
from pathlib import Path
from typing import Protocol

import pytest
from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from stream_app.broker import (
    HOST,
    RECORD_FILE,
    BrokerInfo,
    broker_answers,
    broker_status,
    find_repo_root,
    new_cluster_id,
    render_server_properties,
    start_broker,
    stop_broker,
)
from stream_app.errors import BrokerError

BOOTSTRAP_ENV = "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS"


class TopicNames(Protocol):
    """What the ``unique_topics`` fixture (tests/conftest.py) gives."""

    prefix: str

    def __call__(self, role: str) -> str: ...


needs_local_broker = pytest.mark.skipif(
    bool(os.environ.get(BOOTSTRAP_ENV)),
    reason=f"{BOOTSTRAP_ENV} names an existing cluster: no local broker is started",
)


def _session_broker(local_broker: BrokerInfo | None) -> BrokerInfo:
    if local_broker is None:
        pytest.skip(f"{BOOTSTRAP_ENV} names an existing cluster")
    return local_broker


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on, read from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            # /proc prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(
                bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, len(hex_addr), 8)
            )
            addr = ipaddress.ip_address(raw)
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            found.add((str(addr), int(hex_port, 16)))
    return found


def test_broker_answers_an_admin_client(kafka_bootstrap: str) -> None:
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=30)

    assert metadata.brokers
    assert broker_answers(kafka_bootstrap)


def test_a_message_round_trips_through_a_new_topic(
    kafka_bootstrap: str, unique_topics: TopicNames
) -> None:
    topic = unique_topics("roundtrip")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=30
    )
    assert topic in admin.list_topics(timeout=30).topics

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    delivery_errors: list[object] = []
    producer.produce(
        topic,
        key=b"checkout",
        value=b'{"kpi": "latency_seconds", "value": 0.25}',
        headers=[("source", b"test")],
        on_delivery=lambda err, _msg: delivery_errors.append(err),
    )
    assert producer.flush(30) == 0
    assert delivery_errors == [None]

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_topics.prefix,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: Message | None = None
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while received is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None:
                assert msg.error() is None, msg.error()
                received = msg
    finally:
        consumer.close()

    assert received is not None, "no message consumed within 60 s"
    assert received.topic() == topic
    assert received.key() == b"checkout"
    assert received.value() == b'{"kpi": "latency_seconds", "value": 0.25}'
    assert received.headers() == [("source", b"test")]


def test_broker_status_reports_the_session_broker(local_broker: BrokerInfo | None) -> None:
    broker = _session_broker(local_broker)

    assert broker_status(broker.data_dir) == broker
    assert broker.log_path.is_file()
    assert "Kafka Server started" in broker.log_path.read_text()


def test_starting_again_reuses_the_running_broker(local_broker: BrokerInfo | None) -> None:
    broker = _session_broker(local_broker)

    assert start_broker(broker.data_dir) == broker


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_broker_listens_on_loopback_only(local_broker: BrokerInfo | None) -> None:
    broker = _session_broker(local_broker)

    listening = _listening_addresses(broker.pid)

    assert (HOST, int(broker.bootstrap.rsplit(":", 1)[1])) in listening
    assert len(listening) == 2  # clients and controller
    assert {address for address, _port in listening} == {HOST}


@needs_local_broker
def test_stop_broker_ends_the_process(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, heap="256m", die_with_parent=True)
    try:
        assert broker_answers(broker.bootstrap)
    finally:
        stopped = stop_broker(tmp_path)

    assert stopped is True
    with pytest.raises(ProcessLookupError):
        os.kill(broker.pid, 0)
    assert broker_status(tmp_path) is None
    assert not (tmp_path / "broker" / RECORD_FILE).exists()
    assert stop_broker(tmp_path) is False


@needs_local_broker
def test_a_broker_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"(?i)heap"):  # the JVM's own complaint, from the log
        start_broker(tmp_path, heap="1k", timeout=60)

    assert broker_status(tmp_path) is None
    assert not (tmp_path / "broker" / RECORD_FILE).exists()


@needs_local_broker
def test_a_busy_port_is_refused(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BrokerError, match="in use"):
            start_broker(tmp_path, port=port)

    assert broker_status(tmp_path) is None


def test_rendered_properties_bind_loopback_only() -> None:
    template = (find_repo_root() / "deploy" / "kafka" / "server.properties.template").read_text()

    rendered = render_server_properties(
        template, port=19092, controller_port=19093, log_dir=Path("/data/kraft")
    )
    props = _properties(rendered)

    assert "$" not in rendered
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == "/data/kraft"
    assert "0.0.0.0" not in rendered and "localhost" not in rendered
    assert props["offsets.topic.num.partitions"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_a_template_with_an_unknown_placeholder_is_rejected() -> None:
    with pytest.raises(BrokerError, match="template"):
        render_server_properties(
            "listeners=PLAINTEXT://${host}:${port}", port=1, controller_port=2, log_dir=Path("/x")
        )


def test_cluster_ids_are_what_kafka_accepts() -> None:
    ids = {new_cluster_id() for _ in range(500)}

    assert len(ids) == 500
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
