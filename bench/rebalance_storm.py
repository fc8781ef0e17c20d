"""Rebalance storm: workers join, leave (SIGTERM) and die (SIGKILL) while one group reads a stream
that is already in Kafka; the group must end with the core's verdicts and bucket totals.

    .venv/bin/python -m bench.rebalance_storm --events 200000 --seed 3

Every join or departure is a rebalance while the workers' take buffers are full (the whole stream
is produced before the first worker starts), so input fetched under one assignment is still
buffered when the next assignment arrives. That input must be neither applied nor acked, and the
partition's owner must read it again in order (never-committed partitions included): the storm
counts those stale events (`valueloop_events_stale_total`) so a run shows the path was taken.
Writes the result as JSON and prints a one-line summary; exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._recovery_harness import (
    RecordingPipeline,
    Worker,
    add_run_args,
    compact_scenario,
    group_progress,
    input_partitions,
    latest_verdicts,
    produce,
    read_topic,
    run_main,
    topic_settings,
    totals_differences,
    verdict_differences,
    wait_done,
    wait_settled,
)
from stream_app import simulate

# (action, worker): the storm's steps, one every `step_seconds` while input remains.
PLAN: tuple[tuple[str, str], ...] = (
    ("start", "b"),
    ("start", "c"),
    ("term", "b"),
    ("start", "d"),
    ("kill", "c"),
    ("start", "b"),
    ("term", "d"),
    ("kill", "a"),
    ("start", "c"),
)


def run_storm(
    bootstrap: str,
    workdir: Path,
    *,
    events: int = 60_000,
    seed: int = 3,
    services: int = 6,
    partitions: int = 6,
    step_seconds: float = 4.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the storm on `bootstrap`; returns what happened and every difference found."""
    stream = list(simulate.generate(compact_scenario(seed, events, services, partitions)))
    prefix = f"storm-{uuid.uuid4().hex[:6]}"
    settings, env = topic_settings(bootstrap, prefix, prefix, partitions=partitions)
    ref = RecordingPipeline()
    produce(settings, stream, also=ref)
    names = settings.topic_names()
    parts = input_partitions(bootstrap, [names["deployments"], names["telemetry"]])
    workers = {n: Worker(env, workdir / n / "data", n) for n in "abcd"}
    stale: dict[str, float] = {}
    steps: list[dict[str, Any]] = []

    def record_stale(w: Worker) -> None:
        stale[f"{w.name}-{w.starts}"] = w.metric("valueloop_events_stale_total")

    t0 = time.monotonic()
    try:
        workers["a"].start().wait_ready()
        for i, (action, name) in enumerate(PLAN):
            # The next step comes after `step_seconds`, or earlier once the group has committed
            # its share of the stream (a fast machine must not finish the stream before the
            # storm): step i at i+1 of len(PLAN)+1 equal parts.
            deadline = time.monotonic() + step_seconds
            while True:
                done, total, _ = group_progress(bootstrap, prefix, parts)
                share = (i + 1) / (len(PLAN) + 1)
                if time.monotonic() >= deadline or done >= total or done >= share * total:
                    break
                time.sleep(0.2)
            if done >= total:
                log(f"storm: the stream ended before step {action} {name}")
                break
            w = workers[name]
            if action == "start":
                w.start()
            else:
                record_stale(w)
                if action == "kill":
                    w.kill()
                else:
                    w.stop()
            steps.append(
                {
                    "at": round(time.monotonic() - t0, 1),
                    "action": action,
                    "worker": name,
                    "committed": done,
                    "of": total,
                }
            )
            log(f"storm: {action} {name} at {done}/{total} committed")
        live = [w for w in workers.values() if w.alive()]
        for w in live:
            w.wait_ready()
        wait_done(bootstrap, prefix, parts, live, timeout=600, log=log)
        seconds = time.monotonic() - t0
        # A worker killed at the end still "holds" its partitions until its session times out.
        totals, both = wait_settled(bootstrap, prefix, live, ref.result()[1])
        for w in live:
            record_stale(w)
        verdicts = latest_verdicts(read_topic(bootstrap, settings.topic_impact))
    finally:
        for w in workers.values():
            w.stop()
    want_verdicts, want_totals = ref.result()
    final_diffs = verdict_differences(want_verdicts, verdicts, ("final",))
    totals_diffs = totals_differences(want_totals, totals)
    return {
        "events": len(stream),
        "partitions": partitions,
        "steps": steps,
        "rebalances": len(steps),
        "stale_events": int(sum(stale.values())),
        "stale_by_incarnation": stale,
        "final_verdicts": sum(1 for k in want_verdicts if k[2] == "final"),
        "series_compared": len(want_totals),
        "differences": {
            "final": len(final_diffs),
            "totals": len(totals_diffs),
            "reported_twice": len(both),
        },
        "difference_details": {
            "final": final_diffs[:10],
            "totals": totals_diffs[:10],
            "reported_twice": both[:10],
        },
        "seconds": round(seconds, 1),
    }


def summary(r: dict[str, Any]) -> str:
    d = r["differences"]
    return (
        f"rebalance_storm events={r['events']} rebalances={r['rebalances']}"
        f" stale={r['stale_events']} final_verdicts={r['final_verdicts']}"
        f" series={r['series_compared']} diff vs core: final={d['final']} totals={d['totals']}"
        f" reported_twice={d['reported_twice']}; {r['seconds']} s"
    )


def failed(r: dict[str, Any]) -> list[str]:
    return [k for k, n in r["differences"].items() if n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="about this many events")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--services", type=int, default=6)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--step-seconds", type=float, default=4.0, help="between storm steps")
    add_run_args(ap)
    args = ap.parse_args(argv)
    return run_main(args, "rebalance-storm-", run_storm, summary=summary, failed=failed)


if __name__ == "__main__":
    sys.exit(main())
