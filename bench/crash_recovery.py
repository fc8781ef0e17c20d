"""Crash recovery: a worker SIGKILLed and restarted N times must end exactly like one never killed.

    .venv/bin/python -m bench.crash_recovery --events 1000000 --kills 5 --seed 1

Produces a simulated multi-service stream (telemetry + releases) once to fresh input topics on a
real broker (its own, unless --bootstrap), then runs two consumer groups over it at the same time:
"clean" (one worker, never interrupted) and "killed" (one worker, SIGKILLed on its process group at
random points of its progress and restarted each time with the same app id and data dir). When both
have committed every input partition to its end and flushed their state after that, it compares
the latest verdict per (release, KPI, phase) on each run's impact topic, every bucket total
(GET /state/totals), every flow, DORA and ledger figure of /metrics and the latest value-ledger
record per (release, item) on each run's ledger topic, and all of them against the same core run
in-process over the same events. The stream carries work items and incidents besides the
telemetry and releases, so the flow and DORA figures have something to lose in a crash.
Writes the result as JSON and prints a one-line summary; exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench._recovery_harness import (
    Produced,
    RecordingPipeline,
    Worker,
    add_run_args,
    bucket_diffs,
    changelog_offsets,
    committed_offsets,
    deadletter_reasons,
    duplicate_emissions,
    figure_differences,
    find_samples,
    group_progress,
    input_partitions,
    latest_ledger,
    latest_verdicts,
    ledger_differences,
    produce,
    read_topic,
    run_main,
    stream_scenario,
    topic_settings,
    totals_differences,
    verdict_differences,
    wait_done,
    with_sample_ids,
)
from stream_app import simulate
from stream_app.producer import ensure_topics


def run_crash_recovery(
    bootstrap: str,
    workdir: Path,
    *,
    events: int,
    kills: int,
    seed: int,
    services: int = 6,
    partitions: int = 4,
    sample_ids: bool = False,
    kill_window: tuple[float, float] = (0.05, 0.9),
    timeout: float = 3600.0,
    log: Any = print,
) -> dict[str, Any]:
    """Run the comparison and return its result (see the module docstring)."""
    t_start = time.monotonic()
    scenario = stream_scenario(seed, events, services, partitions=partitions, flow=True)
    prefix = f"cr{seed}-{uuid.uuid4().hex[:6]}"
    s_clean, env_clean = topic_settings(
        bootstrap, prefix, f"{prefix}-clean", partitions=partitions, outputs=f"{prefix}.clean"
    )
    s_killed, env_killed = topic_settings(
        bootstrap, prefix, f"{prefix}-killed", partitions=partitions, outputs=f"{prefix}.killed"
    )
    ref = RecordingPipeline()
    stream = simulate.generate(scenario)
    produced = produce(
        s_clean, with_sample_ids(stream) if sample_ids else stream, into=Produced(), also=ref
    )
    ensure_topics(s_killed)
    log(f"produced {produced.total} events {dict(produced.by_role)} in {produced.seconds:.1f} s")
    names = s_clean.topic_names()
    inputs = ("deployments", "telemetry", "workflow", "incidents")
    parts = input_partitions(bootstrap, [names[r] for r in inputs])

    clean = Worker(env_clean, workdir / "clean" / "data", "clean").start()
    killed = Worker(env_killed, workdir / "killed" / "data", "killed").start()
    result: dict[str, Any] = {
        "seed": seed,
        "events": produced.total,
        "events_by_topic": dict(produced.by_role),
        "services": [s.name for s in scenario.services],
        "releases": len(scenario.releases),
        "partitions": partitions,
        "sample_ids": sample_ids,
        "kills": [],
    }
    try:
        clean.wait_ready()
        killed.wait_ready()
        t_run = time.monotonic()
        rng = random.Random(seed)
        lo, hi = kill_window
        accepted_before_kills = 0.0
        last_done = -1
        for i, frac in enumerate(sorted(rng.uniform(lo, hi) for _ in range(kills))):
            while True:
                done, total, _ = group_progress(bootstrap, killed.env["VALUELOOP_APP_ID"], parts)
                # Past this kill's point of the stream and past the previous kill's position.
                if done >= max(frac * total, last_done + 1) or done >= total:
                    break
                assert killed.alive(), killed.tail()
                time.sleep(0.5)
            time.sleep(rng.uniform(0.0, 2.0))  # somewhere between two commits / snapshots
            accepted = killed.metric("valueloop_samples_total", outcome="accepted")
            replayed = killed.metric("valueloop_events_replayed_total")
            accepted_before_kills += accepted
            done, total, _ = group_progress(bootstrap, killed.env["VALUELOOP_APP_ID"], parts)
            committed = committed_offsets(bootstrap, killed.env["VALUELOOP_APP_ID"], parts)
            killed_at = time.time()
            last_done = done
            killed.kill()
            t_kill = time.monotonic()
            killed.start()
            ready = killed.wait_ready()
            log(f"kill {i + 1}: at {done}/{total} committed, ready again after {ready:.1f} s")
            result["kills"].append(
                {
                    "committed_fraction": round(done / max(total, 1), 4),
                    "accepted_samples_last_scrape": accepted,
                    "replayed_skipped_last_scrape": replayed,
                    "restart_ready_seconds": round(ready, 1),
                    "at_seconds": round(t_kill - t_run, 1),
                    "wall_time": killed_at,
                    "committed_just_before": committed,
                }
            )
        group = {w.name: w.env["VALUELOOP_APP_ID"] for w in (clean, killed)}
        finished = {}
        for w in (clean, killed):
            wait_done(bootstrap, group[w.name], parts, [w], timeout=timeout, log=log)
            finished[w.name] = round(time.monotonic() - t_run, 1)
        totals = {w.name: w.totals() for w in (clean, killed)}
        figures = {w.name: w.figures() for w in (clean, killed)}
        counters = {
            w.name: {
                o: w.metric("valueloop_samples_total", outcome=o)
                for o in ("accepted", "late", "duplicate")
            }
            for w in (clean, killed)
        }
        restored = killed.metric("valueloop_state_restored_services_total")
        skipped = killed.metric("valueloop_events_replayed_total")
        # Where totals differ, which buckets and which input messages (while both still run).
        diagnosis = []
        for d in totals_differences(totals["clean"], totals["killed"])[:4]:
            if "series" not in d:
                continue
            stream, _, scope = d["series"].partition("/")
            buckets = bucket_diffs(clean, killed, d["service"], d["series"])
            for idx, *_ in buckets[:2]:
                d.setdefault("messages", []).append(
                    find_samples(
                        bootstrap, names["telemetry"], d["service"], stream, scope, int(idx), 60.0
                    )
                )
            d["buckets"] = buckets[:10]
            diagnosis.append(d)
    finally:
        for w in (clean, killed):
            w.stop()
    records = {
        "clean": read_topic(bootstrap, s_clean.topic_impact),
        "killed": read_topic(bootstrap, s_killed.topic_impact),
    }
    latest = {k: latest_verdicts(v) for k, v in records.items()}
    ledger = {
        "clean": latest_ledger(read_topic(bootstrap, s_clean.topic_ledger)),
        "killed": latest_ledger(read_topic(bootstrap, s_killed.topic_ledger)),
    }
    ref_verdicts, ref_totals = ref.result()
    ref_figures, ref_ledger = ref.figures(), latest_ledger(ref.ledger_records)
    final, interim = ("final",), ("interim",)
    diffs = {
        "verdicts_killed_vs_clean": verdict_differences(latest["clean"], latest["killed"], final),
        "interim_killed_vs_clean": verdict_differences(latest["clean"], latest["killed"], interim),
        "totals_killed_vs_clean": totals_differences(totals["clean"], totals["killed"]),
        "verdicts_clean_vs_replay": verdict_differences(ref_verdicts, latest["clean"], final),
        # Reported, not failed on: the worker reads the small deployments topic ahead of the
        # telemetry, so an interim look may already know a later overlapping release.
        "interim_clean_vs_replay": verdict_differences(ref_verdicts, latest["clean"], interim),
        "totals_clean_vs_replay": totals_differences(ref_totals, totals["clean"]),
        "figures_killed_vs_clean": figure_differences(figures["clean"], figures["killed"]),
        "figures_clean_vs_replay": figure_differences(ref_figures, figures["clean"]),
        "ledger_killed_vs_clean": ledger_differences(ledger["clean"], ledger["killed"]),
        "ledger_clean_vs_replay": ledger_differences(ref_ledger, ledger["clean"]),
    }
    finals = sum(1 for k in latest["clean"] if k[2] == "final")
    result.update(
        {
            "verdicts": {k: len(v) for k, v in latest.items()},
            "final_verdicts": finals,
            "replay_verdicts": len(ref_verdicts),
            "impact_records": {k: len(v) for k, v in records.items()},
            "re_emitted_verdicts": {k: duplicate_emissions(v) for k, v in records.items()},
            "series_compared": sum(len(v) for v in ref_totals.values()),
            "figures_compared": len(ref_figures),
            "ledger_entries_compared": len(ref_ledger),
            "figures_of_note": {
                k: v
                for k, v in ref_figures.items()
                if k.startswith(
                    (
                        "valueloop_deployments_total",
                        "valueloop_deployment_failures_total",
                        "valueloop_flow_items_finished_total",
                    )
                )
            },
            "samples_counter": counters,
            "accepted_samples_all_incarnations": accepted_before_kills
            + counters["killed"]["accepted"],
            "state_restored_services_last_incarnation": restored,
            "seconds": {
                "to_end": finished,
                "total": round(time.monotonic() - t_start, 1),
                "produce": round(produced.seconds, 1),
            },
            "differences": {k: len(v) for k, v in diffs.items()},
            "difference_details": {k: v[:50] for k, v in diffs.items()},
            "logs": {w.name: str(w.log) for w in (clean, killed)},
            "replayed_events_skipped_last_incarnation": skipped,
            "deadletters": {
                "clean": deadletter_reasons(bootstrap, s_clean.topic_deadletter),
                "killed": deadletter_reasons(bootstrap, s_killed.topic_deadletter),
            },
            "diagnosis": diagnosis,
            "changelog": {
                service: changelog_offsets(bootstrap, killed.env["VALUELOOP_APP_ID"], service)
                for service in sorted({d["service"] for d in diagnosis})
            },
        }
    )
    return result


def summary(r: dict[str, Any]) -> str:
    """The one-line summary of a result."""
    d = r["differences"]
    return (
        f"crash_recovery seed={r['seed']} events={r['events']} kills={len(r['kills'])} "
        f"verdicts={r['verdicts']['clean']} (final {r['final_verdicts']}) "
        f"series={r['series_compared']} figures={r['figures_compared']} "
        f"ledger={r['ledger_entries_compared']} "
        f"diff killed-vs-clean: final={d['verdicts_killed_vs_clean']} "
        f"interim={d['interim_killed_vs_clean']} totals={d['totals_killed_vs_clean']} "
        f"figures={d['figures_killed_vs_clean']} ledger={d['ledger_killed_vs_clean']}; "
        f"clean-vs-replay: final={d['verdicts_clean_vs_replay']} "
        f"interim={d['interim_clean_vs_replay']} totals={d['totals_clean_vs_replay']} "
        f"figures={d['figures_clean_vs_replay']} ledger={d['ledger_clean_vs_replay']}; "
        f"to end {r['seconds']['to_end']} s, total {r['seconds']['total']} s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="at least this many events")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs of the killed worker")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--services", type=int, default=6)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--sample-ids", action="store_true", help="give every sample an event id")
    add_run_args(ap)
    ap.add_argument("--out", type=Path, help="result JSON (default: <workdir>/result.json)")
    args = ap.parse_args(argv)
    return run_main(args, "crash-recovery-", run_crash_recovery, summary=summary, failed=failed)


def failed(result: dict[str, Any]) -> list[str]:
    """The difference kinds that fail the comparison (all but the interim-vs-replay report)."""
    return [k for k, n in result["differences"].items() if n and k != "interim_clean_vs_replay"]


if __name__ == "__main__":
    sys.exit(main())
