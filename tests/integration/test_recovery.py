"""Crash recovery, CI size: a worker SIGKILLed twice ends exactly like one never killed.

The long version (>= 1 million events, >= 5 kills) is bench/crash_recovery.py; this runs the same
harness on ~60k events (3 services, 4 partitions) on the session broker.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.crash_recovery import failed, run_crash_recovery, summary


def test_sigkilled_worker_ends_with_the_same_verdicts_and_bucket_totals(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    r = run_crash_recovery(
        kafka_bootstrap, tmp_path, events=60_000, kills=2, seed=5, services=3, log=lambda _: None
    )
    (tmp_path / "result.json").write_bytes(orjson.dumps(r, option=orjson.OPT_INDENT_2))
    assert len(r["kills"]) == 2
    assert r["final_verdicts"] >= 30, summary(r)  # the comparison has something to compare
    assert r["series_compared"] >= 40, summary(r)
    # Nothing lost, nothing counted twice: every final and interim verdict and every bucket total
    # of the killed run equals the uninterrupted run's, and those equal the in-process core's.
    assert not failed(r), (summary(r), r["difference_details"])
    # Each restart resumed from the changelog, not from scratch.
    assert r["state_restored_services_last_incarnation"] >= 1, summary(r)
