"""``python -m bench [--quick] [--out DIR]``: every benchmark against the real broker, one command.

Writes ``results.json`` and ``RESULTS.md`` into ``--out`` (default: this folder). ``--quick`` is
the CI size (under two minutes): it measures everything with small inputs and asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common, runs
from bench.report import write_markdown

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Size:
    """How big each benchmark is."""

    events: int  # telemetry events of the floor and pipeline runs
    services: int
    scale_events: int
    latency_releases: int
    memory_services: int
    memory_hours: float
    replay_samples_per_minute: int  # `valueloop simulate --scenario demo --samples-per-minute`
    replay_lines: int | None  # replay only the file's first lines (None: all of it)
    one_by_one: bool  # also time Pipeline.handle one event at a time
    profile: bool  # py-spy on the worker, pyinstrument on the replay loop


FULL = Size(300_000, 64, 180_000, 20, 10, 24.0, 4, None, True, True)
QUICK = Size(10_000, 16, 6_000, 3, 6, 6.0, 1, 50_000, False, False)
PARTITIONS = 4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="CI size: small inputs, < 2 minutes")
    ap.add_argument("--out", type=Path, default=HERE, help="where results.json and RESULTS.md go")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile the worker (py-spy) and the replay loop (pyinstrument) in a --quick run too",
    )
    ap.add_argument(
        "--events",
        type=int,
        help="telemetry events of the floor and pipeline runs (scale: 60 %% of it)",
    )
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated subset: floor,pipeline,bad_input,latency,memory,replay,scale",
    )
    args = ap.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.profile:
        size = dataclasses.replace(size, profile=True)
    if args.events:
        size = dataclasses.replace(size, events=args.events, scale_events=args.events * 3 // 5)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="valueloop-bench-"))
    started = time.perf_counter()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "machine": common.machine(),
        "size": size.__dict__,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "figures": {},
        "errors": {},
    }

    def run(name: str, fn: Callable[[], Any]) -> None:
        if only and name.split(".")[0] not in only:
            return
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            results["figures"][name] = fn()
        except Exception as exc:  # one failed figure must not lose the others
            results["errors"][name] = f"{type(exc).__name__}: {exc}"[:4000]
            traceback.print_exc()
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    # Pure-CPU figures first, while no broker or worker competes for the cores.
    run("memory", lambda: _memory(size))
    run("replay", lambda: _replay(size, work))
    broker = None
    needs_kafka = not only or only & {"floor", "pipeline", "bad_input", "latency", "scale"}
    try:
        if needs_kafka:
            try:
                broker = common.open_broker(work)
            except Exception as exc:
                results["errors"]["broker"] = f"{type(exc).__name__}: {exc}"[:4000]
                traceback.print_exc()
        if broker is not None:
            results["broker"] = "environment" if broker.data_dir is None else "local (started)"
            b = broker.bootstrap
            run("floor", lambda: _floor(b, size))
            run(
                "pipeline",
                lambda: runs.pipeline_backlog(
                    b, work / "pipeline", size.events, size.services, PARTITIONS, 900, size.profile
                ),
            )
            # The same backlog with every second value bad: dead-lettering must not slow it down.
            run(
                "bad_input",
                lambda: runs.pipeline_backlog(
                    b, work / "bad", size.events, size.services, PARTITIONS, 900, bad_every=2
                ),
            )
            run("latency", lambda: runs.verdict_latency(b, work / "latency", size.latency_releases))
            run("scale", lambda: _scale(b, size, work))
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(write_markdown(results))
    print(
        f"[bench] wrote {args.out / 'results.json'} and {args.out / 'RESULTS.md'}", file=sys.stderr
    )
    # Slow figures are reported, not failed; a figure that could not be measured is a failure.
    return 1 if results["errors"] else 0


def _floor(bootstrap: str, size: Size) -> dict[str, Any]:
    prefix = f"bench-floor-{int(time.time())}"
    loaded = runs.load_topics(bootstrap, prefix, size.events, size.services, PARTITIONS)
    topic = common.topic_names(prefix)["telemetry"]
    return {
        "load": loaded,
        "decode": common.probe("decode", size.events, size.services),
        "confluent": common.probe("floor-confluent", bootstrap, topic, size.events),
        "aiokafka": common.probe("floor-aiokafka", bootstrap, topic, size.events),
    }


def _scale(bootstrap: str, size: Size, work: Path) -> dict[str, Any]:
    out = {}
    for n in (1, 2):
        out[f"{n}w"] = runs.scale(
            bootstrap, work / f"scale{n}", size.scale_events, size.services, PARTITIONS, n, 900
        )
    return out


def _memory(size: Size) -> dict[str, Any]:
    s, h = size.memory_services, size.memory_hours
    return {
        "tracemalloc": common.probe("memory", s, h, "tracemalloc"),
        "rss": common.probe("memory", s, h, "rss"),
    }


def _replay(size: Size, work: Path) -> dict[str, Any]:
    path = work / "replay.jsonl"
    exe = [sys.executable, "-m", "stream_app"]
    t0 = time.perf_counter()
    subprocess.run(
        [
            *(*exe, "simulate", "--scenario", "demo", "--out", str(path)),
            *("--samples-per-minute", str(size.replay_samples_per_minute)),
        ],
        check=True,
        capture_output=True,
        cwd=common.REPO,
    )
    simulate_s = time.perf_counter() - t0
    if size.replay_lines is not None:  # the first lines of the simulated file
        with path.open("rb") as fh:
            head = [line for _, line in zip(range(size.replay_lines), fh, strict=False)]
        path.write_bytes(b"".join(head))
    with path.open("rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    t0 = time.perf_counter()
    subprocess.run(
        [*exe, "replay", "--quiet", str(path)], check=True, capture_output=True, cwd=common.REPO
    )
    cli_s = time.perf_counter() - t0
    inproc = common.probe("replay-inproc", path, "1" if size.one_by_one else "0")
    out: dict[str, Any] = {
        "file_events": lines,
        "file_bytes": path.stat().st_size,
        "simulate_seconds": simulate_s,
        "cli_seconds": cli_s,
        "cli_per_s": lines / cli_s,
        "inproc": inproc,
    }
    if size.profile:
        out["profile"] = common.probe("profile", path)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
