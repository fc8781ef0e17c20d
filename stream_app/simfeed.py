"""Simulator edge: scenario events to a JSON-lines file and/or to Kafka, paced or flat out."""

from __future__ import annotations

import dataclasses
import gzip
import time
from pathlib import Path
from typing import IO

import orjson
from rich.progress import Progress

from stream_app import codec, simulate
from stream_app.settings import Settings


def scenario_by_name(name: str, seed: int, samples_per_minute: int = 1) -> simulate.Scenario:
    """A preset scenario."""
    if name == "demo":
        return simulate.demo_scenario(seed, samples_per_minute=samples_per_minute)
    if name == "accuracy":
        return simulate.accuracy_scenario(seed, samples_per_minute=samples_per_minute)
    if name == "weekly":
        return simulate.weekly_scenario(seed)
    raise ValueError(f"unknown scenario {name!r}")


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "wb")  # type: ignore[return-value]  # GzipFile is a binary IO
    return path.open("wb")


def run_simulation(
    name: str,
    seed: int,
    *,
    out: Path | None = None,
    truth: Path | None = None,
    settings: Settings | None = None,
    compression: float = 0.0,
    samples_per_minute: int = 1,
) -> int:
    """Generate a scenario; write/produce its events. Returns how many events were generated."""
    sc = scenario_by_name(name, seed, samples_per_minute)
    if truth is not None:
        with truth.open("wb") as fh:
            for t in simulate.ground_truth(sc):
                fh.write(orjson.dumps(dataclasses.asdict(t)) + b"\n")
    if out is None and settings is None:
        return 0
    sender = None
    topics: dict[str, str] = {}
    if settings is not None:
        from stream_app.producer import Sender

        sender = Sender(settings)
        topics = settings.topic_names()
    sink: IO[bytes] | None = _open(out) if out is not None else None
    n = 0
    wall0 = time.monotonic()
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"simulating {name}", total=sc.duration_seconds)
            for ev in simulate.generate(sc):
                value = codec.encode(ev)
                if sink is not None:
                    sink.write(value + b"\n")
                if sender is not None:
                    if compression > 0:
                        # Pace by event time: this event is due at (time - start) / compression.
                        delay = (ev.time - sc.start) / compression - (time.monotonic() - wall0)
                        if delay > 0:
                            time.sleep(delay)
                    sender.send(topics[codec.role_of(ev)], value, codec.key_of(ev))
                n += 1
                if n % 5000 == 0:
                    progress.update(task, completed=ev.time - sc.start)
        if sender is not None:
            sender.flush(120)
    finally:
        if sink is not None:
            sink.close()
    return n
