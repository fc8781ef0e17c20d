"""Offline replay edge: files of produced payloads -> the worker's own Pipeline -> verdicts."""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

from stream_app.codec import Decoded, Rejected, decode_any
from stream_app.core.ledger import LedgerEntry
from stream_app.core.types import VerdictRecord
from stream_app.events import format_timestamp
from stream_app.events.model import Incident, KpiSample, Release, WorkflowEvent
from stream_app.pipeline import MetricSample, Pipeline, Report, report_samples

EXAMPLES_PER_REASON = 3  # rejected lines shown per reason
EXAMPLE_CHARS = 160


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
    # Events the core refused (the worker dead-letters them too), by reason.
    refused: Counter[str] = field(default_factory=Counter)
    # A few rejected lines per reason: "file:line: text (detail)", or the refused event.
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def lines(self) -> int:
        """Non-blank lines read: decoded or rejected."""
        return self.decoded + sum(self.rejected.values())

    def rejected_total(self) -> int:
        """Lines the worker would dead-letter: not decodable, or refused by the core."""
        return sum(self.rejected.values()) + sum(self.refused.values())

    def rejected_share(self) -> float:
        """`rejected_total` as a share of the lines read (0 when there were none)."""
        return self.rejected_total() / self.lines if self.lines else 0.0

    def example(self, reason: str, text: str) -> None:
        """Keep ``text`` as an example of ``reason`` while there are fewer than a few."""
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES_PER_REASON:
            kept.append(text)


def _clip(text: str, limit: int = EXAMPLE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(event: Decoded) -> str:
    """One line naming an event (for a refused event's example)."""
    at = format_timestamp(event.time)
    if isinstance(event, KpiSample):
        return f"sample {event.service}/{event.kpi} at {at}"
    if isinstance(event, Release):
        return f"release {event.id} of {event.service} {event.version} at {at}"
    if isinstance(event, WorkflowEvent):
        return f"workflow {event.id} of {event.service} at {at}"
    if isinstance(event, Incident):
        return f"incident {event.id} of {event.service} at {at}"
    return type(event).__name__  # pragma: no cover


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
            for number, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                ev = decode_any(line, max_bytes=max_bytes)
                if isinstance(ev, Rejected):
                    out.rejected[ev.reason] += 1
                    if len(out.examples.get(ev.reason, ())) < EXAMPLES_PER_REASON:
                        text = _clip(line.decode("utf-8", "replace"))
                        out.example(ev.reason, f"{path}:{number}: {text} ({_clip(ev.detail)})")
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
        for i in batch.rejected():
            reason = batch.outcomes[i]
            out.refused[reason] += 1
            out.example(reason, describe(batch.events[i]))
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


def rejection_error(out: ReplayOutcome, max_rejected_percent: float) -> str | None:
    """Why a replay must fail (no input, or more rejected lines than allowed), or None."""
    if out.lines == 0:
        return "no events in the input (every line blank)"
    share = out.rejected_share()
    if share * 100.0 > max_rejected_percent:
        reasons = ", ".join(f"{k} {n:,}" for k, n in sorted((out.rejected + out.refused).items()))
        return (
            f"{out.rejected_total():,} of {out.lines:,} lines rejected ({100 * share:.2f} %: "
            f"{reasons}), more than --max-rejected {max_rejected_percent:g} %"
        )
    return None


def summary(out: ReplayOutcome, files: Iterable[Path] = ()) -> dict[str, Any]:
    """What a replay found, as JSON-ready values: input counts, final verdicts, DORA, flow and the
    value ledger as of the last event time (the same figures the tables and the worker show)."""
    from stream_app.events.impact import impact_event
    from stream_app.events.ledger import ledger_event
    from stream_app.web.views import dora_report, flow_report  # view models: no faust

    finals: dict[tuple[str, str], VerdictRecord] = {}
    for rec in out.verdicts:
        if rec.phase == "final":
            finals[(rec.release_id, rec.kpi)] = rec  # later revisions win
    ledger: dict[tuple[str | None, str | None], LedgerEntry] = {}
    for e in out.ledger:
        ledger[(e.release_id, e.item_id)] = e  # a later entry supersedes an earlier one
    rep = out.reports
    return {
        "files": [str(p) for p in files],
        "input": {
            "lines": out.lines,
            "decoded": out.decoded,
            "rejected": out.rejected_total(),
            "rejected_ratio": out.rejected_share(),
            "rejected_by_reason": dict(sorted((out.rejected + out.refused).items())),
            "examples": {k: list(v) for k, v in sorted(out.examples.items())},
            "outcomes": dict(sorted(out.outcomes.items())),
        },
        "report_time": None if rep is None else format_timestamp(rep.now),
        "verdicts": [
            impact_event(rec).model_dump()
            for rec in sorted(finals.values(), key=lambda r: (r.release_time, r.kpi))
        ],
        "pending": [
            {"release_id": r.id, "service": r.service, "version": r.version} for r in out.pending
        ],
        "dora": {} if rep is None else {s: dora_report(r) for s, r in sorted(rep.dora.items())},
        "flow": {} if rep is None else {v: flow_report(r) for v, r in sorted(rep.flow.items())},
        "ledger": [ledger_event(e).model_dump() for e in ledger.values()],
    }
