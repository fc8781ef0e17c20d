"""Scale-out: 1, 2 and 3 workers in one consumer group give the same verdicts and bucket totals;
a SIGKILLed worker's partitions move to the others, which restore its services from the changelog.

One stream (6 services, 6 partitions) is produced in two halves to shared input topics; three
consumer groups read it: "one" (1 worker), "two" (2 workers) and "three" (3 workers, one of which
is SIGKILLed once the group has committed the first half, before the second half is produced).
Verdicts are the latest per (release, KPI, phase) on each group's impact topic; bucket totals the
union of the workers' GET /state/totals (each reports the services of the partitions it holds).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import pytest

from bench._recovery_harness import (
    RecordingPipeline,
    Worker,
    compact_scenario,
    diagnose,
    input_partitions,
    latest_verdicts,
    merge_totals,
    produce,
    read_topic,
    topic_settings,
    totals_differences,
    verdict_differences,
    wait_done,
)
from stream_app import simulate
from stream_app.producer import ensure_topics
from stream_app.settings import Settings

PARTITIONS = 6


@pytest.mark.timeout(400)
@pytest.mark.xfail(
    reason=(
        "known bug, seen on 339a082 too: the three-worker group sometimes never commits an input "
        "partition to its end after rebalances (a message skipped as stale, then its partition's "
        "later offset applied); owned by issue 15's intake work"
    ),
    strict=False,
)
def test_one_two_three_workers_agree_and_a_killed_workers_partitions_move(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = list(simulate.generate(compact_scenario(4, 70_000, 6, PARTITIONS)))
    half = len(events) // 2
    prefix = f"scale-{uuid.uuid4().hex[:6]}"
    groups: dict[str, tuple[Settings, list[Worker]]] = {}
    for name, n in (("one", 1), ("two", 2), ("three", 3)):
        settings, env = topic_settings(
            kafka_bootstrap,
            prefix,
            f"{prefix}-{name}",
            partitions=PARTITIONS,
            outputs=f"{prefix}.{name}",
        )
        workers = [Worker(env, tmp_path / name / f"w{i}" / "data", f"{name}{i}") for i in range(n)]
        ensure_topics(settings)  # its own outputs exist before its workers send verdicts
        groups[name] = (settings, workers)
    ref = RecordingPipeline()
    first_settings = groups["one"][0]
    produce(first_settings, events[:half], also=ref)
    names = first_settings.topic_names()
    parts = input_partitions(kafka_bootstrap, [names["deployments"], names["telemetry"]])
    assert len(parts) == 2 * PARTITIONS
    try:
        for _, workers in groups.values():
            for w in workers:
                w.start()
        for _, workers in groups.values():
            for w in workers:
                w.wait_ready()
        # The first half everywhere; then one of three workers dies with state in its partitions.
        three = groups["three"][1]
        wait_done(kafka_bootstrap, f"{prefix}-three", parts, three, timeout=150)
        owned = {w.name: sorted(w.totals()) for w in three}
        victim = max(three, key=lambda w: len(owned[w.name]))
        assert owned[victim.name], owned
        victim.kill()
        survivors = [w for w in three if w is not victim]
        t_kill = time.monotonic()
        produce(first_settings, events[half:], also=ref)

        results = {}
        for name, (settings, workers) in groups.items():
            live = [w for w in workers if w.alive()]
            wait_done(kafka_bootstrap, settings.app_id, parts, live, timeout=150)
            totals, both = merge_totals(w.totals() for w in live)
            results[name] = (
                totals,
                both,
                latest_verdicts(read_topic(kafka_bootstrap, settings.topic_impact)),
            )
        moved = {w.name: sorted(w.totals()) for w in survivors}
        one_totals = results["one"][0]
        evidence = {
            name: diagnose(
                kafka_bootstrap,
                names["telemetry"],
                groups["one"][1],
                groups[name][1],
                groups[name][0].app_id,
                totals_differences(one_totals, results[name][0]),
            )
            for name in ("two", "three")
        }
        (tmp_path / "evidence.json").write_bytes(orjson.dumps(evidence))
        restored = {w.name: w.metric("valueloop_state_restored_services_total") for w in survivors}
        failover_seconds = time.monotonic() - t_kill
    finally:
        for _, workers in groups.values():
            for w in workers:
                w.stop()

    want_verdicts, want_totals = ref.result()
    finals = [k for k in want_verdicts if k[2] == "final"]
    assert len(finals) >= 60
    _, _, one_verdicts = results["one"]
    assert totals_differences(want_totals, one_totals) == []
    assert verdict_differences(want_verdicts, one_verdicts, ("final",)) == []
    for name in ("two", "three"):
        totals, both, verdicts = results[name]
        assert both == [], f"{name}: services reported by two workers with different totals"
        diffs = totals_differences(one_totals, totals)
        assert diffs == [], (name, evidence[name], owned, moved, restored)
        # Final verdicts only: an interim look depends on whether a later overlapping release
        # was already read from the (small, quickly consumed) deployments topic, which varies
        # with the number of consumers (see bench/crash_recovery.py's interim report).
        diffs = verdict_differences(one_verdicts, verdicts, ("final",))
        assert diffs == [], (name, diffs[:6], owned, moved, restored)
    # The victim's services now live on the survivors, restored from the changelog.
    assert set(owned[victim.name]) <= {s for v in moved.values() for s in v}, (owned, moved)
    assert max(restored.values()) > 0, (restored, failover_seconds)
