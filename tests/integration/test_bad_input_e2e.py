"""Every class of bad input against a real worker: dead-lettered with its reason, counted by reason,
and 20,000 good samples sent after them are all accepted (the worker keeps consuming)."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream_app.producer import Sender, ensure_topics
from stream_app.settings import Settings
from tests.integration.workerproc import consume_all, start_worker, topic_env
from tests.unit.test_bad_input import CASES, LIMITS_ENV, T0, Message, sample

pytestmark = pytest.mark.integration
GOOD_AFTER = 20_000


def _settings(bootstrap: str, env: dict[str, str]) -> Settings:
    topics = {k.removeprefix("VALUELOOP_").lower(): v for k, v in env.items() if "_TOPIC_" in k}
    return Settings(kafka_bootstrap_servers=bootstrap, **topics)


def _send(sender: Sender, names: dict[str, str], messages: list[Message]) -> None:
    for role, value, headers in messages:
        # Keyed by service where there is one, as producers do (the same partition as its setup).
        try:
            key = str(orjson.loads(value).get("service", "s0")).encode()[:200]
        except (orjson.JSONDecodeError, AttributeError):
            key = b"s0"
        sender.send(names[role], value, key=key, headers=list(headers) or None)
    sender.flush(60)


def test_every_bad_input_class_is_dead_lettered_and_good_input_keeps_flowing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix), "VALUELOOP_APP_ID": f"{prefix}-app", **LIMITS_ENV}
    settings = _settings(kafka_bootstrap, env)
    ensure_topics(settings)
    names = settings.topic_names()
    worker = start_worker(kafka_bootstrap, env, tmp_path)
    sender = Sender(settings)
    try:
        # 1. The good messages some classes need first (services that fill the limit, originals
        #    of duplicates), processed before any bad message is sent.
        setups = list(dict.fromkeys(m for c in CASES for m in c.before))
        _send(sender, names, setups)
        for role, n in Counter(role for role, _, _ in setups).items():
            worker.wait_for("valueloop_events_accepted_total", n, topic=role)

        # 2. Every bad message.
        _send(sender, names, [c.message for c in CASES])
        dead = consume_all(kafka_bootstrap, names["deadletter"], len(CASES), timeout=120)
        assert len(dead) == len(CASES), f"{len(dead)} dead letters for {len(CASES)} cases"
        by_bytes = {}
        for m in dead:
            h = dict(m.headers())  # type: ignore[attr-defined]
            original = tuple((k, v) for k, v in m.headers() if k.startswith("ce_"))  # type: ignore[attr-defined]
            by_bytes[(m.value(), original)] = h  # type: ignore[attr-defined]
        for c in CASES:
            role, value, headers = c.message
            h = by_bytes.get((value, tuple(headers)))
            assert h is not None, f"{c.name}: not in the dead-letter topic"
            assert h["valueloop.reason"].decode() == c.reason, c.name
            assert h["valueloop.source.topic"].decode() == names[role], c.name
            assert h["valueloop.source.offset"].isdigit(), c.name
        expected = Counter((c.message[0], c.reason) for c in CASES)
        for (role, reason), n in expected.items():
            got = worker.wait_for("valueloop_events_rejected_total", n, topic=role, reason=reason)
            assert got == n, (role, reason)
        assert worker.metric("valueloop_deadletter_messages_total") == len(CASES)

        # 3. Good input after all of that: every sample is accepted.
        good = [
            (
                "telemetry",
                orjson.dumps(sample(f"s{i % 5}", time=T0 + 180 + i // 10, id=f"g{i}")),
                (),
            )
            for i in range(GOOD_AFTER)
        ]
        _send(sender, names, good)  # type: ignore[arg-type]
        accepted = sum(1 for role, _, _ in setups if role == "telemetry") + GOOD_AFTER
        worker.wait_for("valueloop_events_accepted_total", accepted, timeout=240, topic="telemetry")
        assert worker.metric("valueloop_deadletter_messages_total") == len(CASES)
        assert worker.proc.poll() is None
    finally:
        worker.stop()
        del sender  # its librdkafka client goes now, not after the session's broker
