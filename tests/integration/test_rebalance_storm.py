"""Rebalance storm, CI size: workers join, leave and die while one group reads a stream already in
Kafka; the group ends with the core's final verdicts and bucket totals (bench/rebalance_storm.py
is the long version)."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.rebalance_storm import failed, run_storm, summary


def test_a_group_through_joins_departures_and_kills_ends_like_the_core(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    r = run_storm(kafka_bootstrap, tmp_path, events=60_000, step_seconds=2.5, log=lambda _: None)
    (tmp_path / "result.json").write_bytes(orjson.dumps(r, option=orjson.OPT_INDENT_2))
    assert r["rebalances"] >= 3, summary(r)  # the storm happened while input remained
    assert r["final_verdicts"] >= 30, summary(r)
    assert not failed(r), (summary(r), r["difference_details"])
