"""Offline replay edge: files of produced payloads -> the worker's own Pipeline -> verdicts."""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import IO

from stream_app.codec import Decoded, Rejected, decode_any
from stream_app.core.ledger import LedgerEntry
from stream_app.core.types import VerdictRecord
from stream_app.events.model import Release
from stream_app.pipeline import MetricSample, Pipeline, Report, report_samples


@dataclass
class ReplayOutcome:
    """What a replay produced and counted."""

    verdicts: list[VerdictRecord] = field(default_factory=list)
    decoded: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    pending: list[Release] = field(default_factory=list)
    report: list[MetricSample] = field(default_factory=list)
    reports: Report | None = None  # flow, DORA and ledger as of the last event time
    ledger: list[LedgerEntry] = field(default_factory=list)  # entries as the worker publishes them
    observations: list[MetricSample] = field(default_factory=list)  # histogram observations


def open_lines(path: Path) -> IO[bytes]:
    """Open a JSON-lines file, gzip-compressed when it ends in .gz."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary IO
    return path.open("rb")


def read_events(
    paths: Iterable[Path], out: ReplayOutcome, max_bytes: int = 262144
) -> Iterator[Decoded]:
    """Decode every line of the files (one produced message value per line), counting rejects."""
    for path in paths:
        with open_lines(path) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                ev = decode_any(line, max_bytes=max_bytes)
                if isinstance(ev, Rejected):
                    out.rejected[ev.reason] += 1
                else:
                    out.decoded += 1
                    yield ev


BATCH = 65536  # events per `Pipeline.handle_many` call (same results as one by one)
_time_of = attrgetter("time")


def replay(events: Iterable[Decoded], pipeline: Pipeline, out: ReplayOutcome) -> ReplayOutcome:
    """Run decoded events through the pipeline in event-time order (stable: ties keep file order).

    At the end every service is closed up to its newest event, as if no more input were coming:
    releases whose post window reaches beyond the data are reported as pending.
    """
    ordered = sorted(events, key=_time_of)
    for lo in range(0, len(ordered), BATCH):
        batch = pipeline.handle_many(ordered[lo : lo + BATCH])
        out.outcomes.update(batch.outcomes)
        for _, step in batch.emitted:
            out.verdicts.extend(step.records)
            out.ledger.extend(step.ledger)
    closing = pipeline.close_input()
    out.verdicts.extend(closing.records)
    out.ledger.extend(closing.ledger)
    out.pending = pipeline.engine.pending_releases()
    out.reports = pipeline.report()
    out.observations = pipeline.drain_observations()
    out.report = report_samples(out.reports) if out.reports is not None else []
    return out
