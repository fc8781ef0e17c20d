"""Duplicated input: every sample and release delivered twice (same event id) is counted once.

A producer that retries after a lost ack sends the same event again; an upstream replay sends it
again a little later. Two workers run side by side on the real broker: one reads every event once,
the other every event twice (the second copy ~300 messages = ~3 event-minutes later, within the
allowed lateness, so only the id can tell it is a copy). Bucket totals and verdicts must be equal,
and equal to the core run in-process over the single delivery.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench._recovery_harness import (
    RecordingPipeline,
    Worker,
    compact_scenario,
    input_partitions,
    latest_verdicts,
    produce,
    read_topic,
    topic_settings,
    totals_differences,
    verdict_differences,
    wait_done,
    with_sample_ids,
)
from stream_app import codec, simulate

LAG = 300  # messages between an event and its second copy


def twice(events: Sequence[codec.Decoded], lag: int = LAG) -> Iterator[codec.Decoded]:
    """Each event, and again `lag` events later (the last ones again at the end)."""
    for i, ev in enumerate(events):
        yield ev
        if i >= lag:
            yield events[i - lag]
    yield from events[max(0, len(events) - lag) :]


def test_every_event_delivered_twice_is_counted_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    events = list(with_sample_ids(simulate.generate(compact_scenario(8, 30_000, 2)), "dup-"))
    assert sum(isinstance(e, codec.Release) for e in events) >= 6
    ref = RecordingPipeline()
    runs = {}
    for name, stream in (("once", iter(events)), ("twice", twice(events))):
        prefix = f"dup-{name}-{uuid.uuid4().hex[:6]}"
        settings, env = topic_settings(kafka_bootstrap, prefix, f"{prefix}-app")
        produced = produce(settings, stream, also=ref if name == "once" else None)
        assert produced.total == len(events) * (1 if name == "once" else 2)
        runs[name] = (settings, Worker(env, tmp_path / name / "data", name).start())
    try:
        totals, verdicts = {}, {}
        for _, w in runs.values():
            w.wait_ready()
        for name, (settings, w) in runs.items():
            names = settings.topic_names()
            parts = input_partitions(kafka_bootstrap, [names["deployments"], names["telemetry"]])
            wait_done(kafka_bootstrap, settings.app_id, parts, [w], timeout=240)
            totals[name] = w.totals()
            verdicts[name] = latest_verdicts(read_topic(kafka_bootstrap, settings.topic_impact))
        counters = {
            name: {
                o: w.metric("valueloop_samples_total", outcome=o)
                for o in ("accepted", "duplicate", "late")
            }
            for name, (_, w) in runs.items()
        }
    finally:
        for _, w in runs.values():
            w.stop()
    want_verdicts, want_totals = ref.result()
    finals = [k for k in want_verdicts if k[2] == "final"]
    assert len(finals) >= 24
    assert totals_differences(want_totals, totals["once"]) == []
    assert verdict_differences(want_verdicts, verdicts["once"], ("final",)) == []
    # The copies changed nothing: same buckets, same verdicts, and they were seen as duplicates.
    diffs = totals_differences(totals["once"], totals["twice"])
    assert diffs == [], (counters, diffs[:6])
    diffs = verdict_differences(verdicts["once"], verdicts["twice"])
    assert diffs == [], (counters, diffs[:6])
    samples = sum(isinstance(e, codec.KpiSample) for e in events)
    assert counters["twice"]["accepted"] == counters["once"]["accepted"] == samples, counters
