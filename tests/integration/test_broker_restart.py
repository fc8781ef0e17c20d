"""Broker restart: the broker stops mid-stream and comes back on the same port and data dir.

The worker must say it is not ready while the broker is away (GET /health -> 503), reconnect by
itself when it is back, and end with the verdicts and bucket totals of the same events run
through the core in-process (nothing lost, nothing counted twice).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bench._recovery_harness import (
    RecordingPipeline,
    Worker,
    compact_scenario,
    free_port,
    group_progress,
    input_partitions,
    latest_verdicts,
    produce,
    read_topic,
    topic_settings,
    totals_differences,
    verdict_differences,
    wait_done,
)
from stream_app import simulate
from stream_app.broker import BrokerInfo, start_broker, stop_broker

NOT_READY_WITHIN = 30.0  # seconds after the broker stopped
READY_AGAIN_WITHIN = 90.0  # seconds after it is back


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A broker of this test only (data dir, port); stopped by pid at the end."""
    data_dir, port = tmp_path / "kafka", free_port()
    start_broker(data_dir, port=port, heap="512m", timeout=120, die_with_parent=True)
    try:
        yield data_dir, port
    finally:
        stop_broker(data_dir)


def restart(data_dir: Path, port: int) -> BrokerInfo:
    return start_broker(data_dir, port=port, heap="512m", timeout=120, die_with_parent=True)


def test_worker_survives_a_broker_restart_and_reports_not_ready_meanwhile(
    own_broker: tuple[Path, int], tmp_path: Path
) -> None:
    data_dir, port = own_broker
    bootstrap = f"127.0.0.1:{port}"
    events = list(simulate.generate(compact_scenario(6, 40_000, 2)))
    cut = int(len(events) * 0.4)
    prefix = f"brk-{uuid.uuid4().hex[:6]}"
    settings, env = topic_settings(bootstrap, prefix, f"{prefix}-app")
    ref = RecordingPipeline()
    produce(settings, events[:cut], also=ref)
    names = settings.topic_names()
    parts = input_partitions(bootstrap, [names["deployments"], names["telemetry"]])
    w = Worker(env, tmp_path / "worker" / "data", "w").start()
    # (seconds since the broker stopped, /health status, /state/broker's reachable)
    seen: list[tuple[float, int | None, bool | None]] = []
    try:
        w.wait_ready()
        # Mid-stream: the worker has committed part of the first 40 % (not necessarily all).
        deadline = time.monotonic() + 120
        while group_progress(bootstrap, settings.app_id, parts)[0] == 0:
            assert time.monotonic() < deadline, w.tail()
            time.sleep(0.2)
        before = w.get("/state/broker")[1]
        stop_broker(data_dir)
        t_stop = time.monotonic()
        not_ready_after = None
        while time.monotonic() - t_stop < NOT_READY_WITHIN:
            assert w.alive(), f"the worker died without its broker:\n{w.tail()}"
            got = w.try_get("/health", timeout=3)
            probe = w.try_get("/state/broker", timeout=3)
            reachable = orjson.loads(probe[1]).get("reachable") if probe else None
            seen.append((round(time.monotonic() - t_stop, 1), got[0] if got else None, reachable))
            if got is not None and got[0] == 503:
                not_ready_after = time.monotonic() - t_stop
                break
            time.sleep(0.5)
        restart(data_dir, port)
        t_back = time.monotonic()
        ready_after = None
        while time.monotonic() - t_back < READY_AGAIN_WITHIN:
            assert w.alive(), f"the worker died after the broker came back:\n{w.tail()}"
            got = w.try_get("/health", timeout=3)
            if got is not None and got[0] == 200:
                ready_after = time.monotonic() - t_back
                break
            time.sleep(0.5)
        assert ready_after is not None, f"not ready {READY_AGAIN_WITHIN:.0f} s after restart"
        produce(settings, events[cut:], also=ref)
        wait_done(bootstrap, settings.app_id, parts, [w], timeout=240)
        totals = w.totals()
        verdicts = latest_verdicts(read_topic(bootstrap, settings.topic_impact))
    finally:
        w.stop()
    want_verdicts, want_totals = ref.result()
    assert sum(1 for k in want_verdicts if k[2] == "final") >= 20
    assert totals_differences(want_totals, totals) == []
    assert verdict_differences(want_verdicts, verdicts, ("final",)) == []
    assert not_ready_after is not None, f"/health while the broker was away: {seen}; {before!r}"
