"""Crash recovery, CI size: a worker SIGKILLed twice ends exactly like one never killed: same
verdicts, bucket totals, flow and DORA figures on /metrics, and value-ledger records.

The long version (>= 1 million events, >= 5 kills) is bench/crash_recovery.py; this runs the same
harness on ~60k events (3 services, 4 partitions) on the session broker.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.crash_recovery import failed, run_crash_recovery, summary


def test_sigkilled_worker_ends_with_the_same_verdicts_totals_flow_dora_and_ledger(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    r = run_crash_recovery(
        kafka_bootstrap, tmp_path, events=60_000, kills=2, seed=5, services=3, log=lambda _: None
    )
    (tmp_path / "result.json").write_bytes(orjson.dumps(r, option=orjson.OPT_INDENT_2))
    assert len(r["kills"]) == 2
    assert r["final_verdicts"] >= 30, summary(r)  # the comparison has something to compare
    assert r["series_compared"] >= 40, summary(r)
    assert r["figures_compared"] >= 100 and r["ledger_entries_compared"] >= 5, summary(r)
    note = r["figures_of_note"]
    assert sum(v for k, v in note.items() if "flow_items_finished" in k) >= 5, note
    assert sum(v for k, v in note.items() if "deployment_failures" in k) >= 1, note
    # Nothing lost, nothing counted twice: every final and interim verdict, bucket total, flow,
    # DORA and ledger figure and ledger record of the killed run equals the uninterrupted run's,
    # and those equal the in-process core's.
    assert not failed(r), (summary(r), r["difference_details"])
    assert all(n == 0 for k, n in r["differences"].items() if k != "interim_clean_vs_replay")
    # Each restart resumed from the changelog, not from scratch.
    assert r["state_restored_services_last_incarnation"] >= 1, summary(r)
