"""`valueloop replay`: progress bar, verdict, value-stream-map and DORA tables, the verdict file."""

from __future__ import annotations

import gc
import os
import time
from itertools import islice
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stream_app.codec import Decoded, encode_verdict
from stream_app.core.catalog import load_catalog
from stream_app.core.dora import DoraReport
from stream_app.core.flow import Distribution, FlowReport
from stream_app.core.ledger import LedgerEntry, load_features
from stream_app.core.valuestream import load_valuestream
from stream_app.events.ledger import encode_ledger
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, read_events, replay, summary
from stream_app.settings import Settings

COLORS = {
    "degraded": "red",
    "improved": "green",
    "neutral": "white",
    "inconclusive": "yellow",
    "confounded": "magenta",
}


# Width of the tables when stdout is not a terminal (CI logs, pipes): wide enough that no table is
# truncated or wrapped; rich would otherwise assume 80 columns.
LOG_WIDTH = 1000


def console(quiet: bool = False) -> Console:
    """The replay's console: the terminal's width, else (no terminal, no COLUMNS) `LOG_WIDTH`."""
    con = Console(quiet=quiet)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con = Console(quiet=quiet, width=LOG_WIDTH)
    return con


def run_replay(
    settings: Settings,
    files: list[Path],
    *,
    out: Path | None = None,
    quiet: bool = False,
    report: Path | None = None,
    summary_out: Path | None = None,
    ledger_out: Path | None = None,
    con: Console | None = None,
) -> ReplayOutcome:
    """Replay files through the worker's pipeline; print a summary; write verdicts to `out`.

    With `report`, also write the web view's pages as one self-contained HTML file there; with
    `summary_out`, the input counts, final verdicts, DORA, flow and ledger figures as JSON; with
    `ledger_out`, the ledger entries as JSON lines, exactly the records the worker publishes.
    """
    con = con or console(quiet)
    pipeline = Pipeline(
        load_catalog(settings.kpis_file),
        load_valuestream(settings.valuestream_file),
        report_period_seconds=settings.report_period_days * 86400.0,
        features=load_features(settings.features_file),
        cost_per_hour=settings.cost_per_hour,
        currency=settings.currency,
        rework_window_seconds=settings.rework_window_hours * 3600.0,
        limits=settings.guard_limits(),  # the worker's limits: the same events, the same verdicts
        clock=time.time,
    )
    result = ReplayOutcome()
    total = sum(p.stat().st_size for p in files)
    with Progress(console=con, transient=True, disable=quiet) as progress:
        task = progress.add_task("reading", total=total)
        events: list[Decoded] = []
        done = 0
        source = read_events(files, result, settings.max_message_bytes)
        # Every event read stays alive until the end: the cyclic garbage collector would scan
        # them again and again while the list grows, so it waits, then leaves them out for good.
        gc.disable()
        try:
            while True:
                before = len(events)
                events.extend(islice(source, 20000))
                if len(events) == before:
                    break
                # File position is not exposed through gzip; estimate from events read.
                done = min(total, done + total // 100)
                progress.update(task, completed=done)
            gc.freeze()
        finally:
            gc.enable()
        progress.update(task, completed=total, description="judging")
        try:
            replay(events, pipeline, result)
        finally:
            gc.unfreeze()
    if out is not None:
        with out.open("wb") as fh:
            for rec in result.verdicts:
                fh.write(encode_verdict(rec) + b"\n")
    print_replay_summary(con, result)
    if result.reports is not None:
        print_value_stream_maps(con, result.reports.flow)
        print_dora(con, result.reports.dora)
    print_ledger(con, result.ledger)
    if ledger_out is not None:
        with ledger_out.open("wb") as fh:
            for entry in result.ledger:
                fh.write(encode_ledger(entry) + b"\n")
        con.print(f"ledger: {ledger_out} ({len(result.ledger)} record(s))")
    if summary_out is not None:
        summary_out.write_bytes(
            orjson.dumps(summary(result, files), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )
        con.print(f"summary: {summary_out}")
    if report is not None:
        from stream_app.web import write_report

        write_report(pipeline, report, f"valueloop report: {', '.join(p.name for p in files)}")
        con.print(f"report: {report} (open it in a browser; it needs no network)")
    return result


def print_replay_summary(con: Console, result: ReplayOutcome) -> None:
    """Counts, final verdicts per release and KPI, pending releases."""
    con.print(
        f"decoded {result.decoded:,} events; rejected "
        f"{sum(result.rejected.values()):,} {dict(result.rejected) or ''}; "
        f"outcomes {dict(result.outcomes)}"
    )
    print_rejections(con, result)
    finals = {}
    for rec in result.verdicts:
        if rec.phase == "final":
            finals[(rec.release_id, rec.kpi)] = rec  # later revisions win
    t = Table(title=f"Final verdicts ({len(finals)})")
    for col in ("service", "version", "kpi", "change", "95% CI", "verdict", "reason"):
        t.add_column(col)
    for rec in sorted(finals.values(), key=lambda r: (r.release_time, r.kpi)):
        j = rec.judgement
        ch = "-" if j.change is None else f"{100 * j.change:+.1f}%"
        ci = (
            "-"
            if j.ci_low is None or j.ci_high is None
            else f"[{100 * j.ci_low:+.1f}%, {100 * j.ci_high:+.1f}%]"
        )
        t.add_row(
            rec.service,
            rec.version,
            rec.kpi,
            ch,
            ci,
            f"[{COLORS.get(j.verdict, 'white')}]{j.verdict}[/]",
            j.reason_code,
        )
    con.print(t)
    if result.pending:
        con.print(
            f"{len(result.pending)} release(s) pending (post window beyond the data): "
            + ", ".join(f"{r.service} {r.version}" for r in result.pending[:10])
        )


def print_rejections(con: Console, result: ReplayOutcome) -> None:
    """Rejected lines (and events the core refused) per reason, with a few examples of each."""
    counts = result.rejected + result.refused
    for reason, n in sorted(counts.items()):
        con.print(f"rejected {n:,} as {reason}, e.g.:", markup=False, highlight=False)
        for text in result.examples.get(reason, ()):
            con.print(f"  {text}", markup=False, highlight=False)


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f} h"


def _pcts(d: Distribution | None) -> str:
    return "-" if d is None else f"{_hours(d.p50)} / {_hours(d.p85)}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_value_stream_maps(con: Console, flow: dict[str, FlowReport]) -> None:
    """One table per value stream: stages in order, active/wait p50/p85, WIP, the bottleneck."""
    for vs, r in sorted(flow.items()):
        t = Table(title=f"Value stream {vs}: {r.finished} item(s) finished in the period")
        for col in ("stage", "kind", "items", "active p50 / p85", "wait p50 / p85"):
            t.add_column(col)
        for col in ("wait share", "WIP", ""):
            t.add_column(col, justify="right")
        for sr in r.stages:
            neck = r.bottleneck is not None and r.bottleneck.stage == sr.stage
            t.add_row(
                sr.stage if sr.in_flow else f"[dim]{sr.stage} (before flow)[/]",
                sr.kind,
                str(sr.items),
                _pcts(sr.active),
                _pcts(sr.wait),
                _ratio(sr.wait_share),
                str(sr.load),
                "[red]<< bottleneck[/]" if neck else "",
            )
        con.print(t)
        shares = ", ".join(f"{k} {_ratio(v)}" for k, v in sorted(r.distribution.items()) if v)
        con.print(
            f"flow time p50 / p85 {_pcts(r.flow_time)}; flow efficiency {_ratio(r.efficiency)}"
            f" (active {_hours(r.active_seconds)} of {_hours(r.flow_seconds)});"
            f" velocity {r.velocity_per_day:.2f} item(s)/day; WIP {r.open_items}"
            + (f"; distribution {shares}" if shares else "")
        )
        if r.bottleneck is not None:
            b = r.bottleneck
            con.print(
                f"bottleneck: {b.stage} holds {_ratio(b.wait_share)} of the waiting time;"
                f" items wait there {_hours(b.wait.p50)} (p50), {_hours(b.wait.p85)} (p85)"
            )


def print_dora(con: Console, dora: dict[str, DoraReport]) -> None:
    """The four DORA keys per service, with failures by cause."""
    if not dora:
        return
    t = Table(title="DORA per service (over the report period)")
    for col in (
        "service",
        "deployments",
        "per day",
        "lead time p50 / p85",
        "change failure rate",
        "failures by cause",
        "recovery p50 / p85",
        "unrecovered",
    ):
        t.add_column(col)
    for service, r in sorted(dora.items()):
        causes = ", ".join(f"{c} {n}" for c, n in sorted(r.failures_by_cause.items()) if n)
        t.add_row(
            service,
            str(r.deployments),
            f"{r.deployment_frequency_per_day:.2f}",
            _pcts(r.lead_time),
            _ratio(r.change_failure_rate),
            causes or "-",
            _pcts(r.recovery_time),
            str(r.unrecovered),
        )
    con.print(t)


OUTCOME_COLORS = {
    "met": "green",
    "partly-met": "yellow",
    "not-met": "white",
    "went-the-other-way": "red",
    "inconclusive": "magenta",
    "pending": "dim",
}


def print_ledger(con: Console, entries: list[LedgerEntry]) -> None:
    """The value ledger: per release (and declared feature item) its cost and delivered value."""
    latest: dict[tuple[str | None, str | None], LedgerEntry] = {}
    for e in entries:
        latest[(e.release_id, e.item_id)] = e  # a later entry supersedes an earlier one
    if not latest:
        return
    t = Table(title=f"Value ledger ({len(latest)})")
    for col in ("service", "release / item", "items", "active work", "flow time"):
        t.add_column(col)
    for col in ("KPIs moved (final verdicts)", "expected", "outcome"):
        t.add_column(col)
    for col in ("delivered a day [95% CI]", "cost", "value / eng. hour"):
        t.add_column(col, justify="right")
    for e in sorted(latest.values(), key=lambda x: (x.time or 0.0, x.service, x.item_id or "")):
        moves = ", ".join(
            f"{k.kpi} {100 * k.change:+.1f}% ({k.verdict})"
            if k.change is not None
            else f"{k.kpi} ({k.verdict})"
            for k in e.kpis
            if k.verdict in ("improved", "degraded")
        )
        expected = ", ".join(
            f"{x.kpi} {'+' if x.direction == 'up' else '-'}{100 * x.change:.1f}%"
            for x, _ in e.expectations
        )
        outcome = e.outcome or "-"
        t.add_row(
            e.service,
            e.version if e.item_id is None else f"item {e.item_id} ({e.version or 'not shipped'})",
            str(e.cost.items),
            _hours(e.cost.active_seconds),
            _hours(e.cost.flow_seconds),
            moves or "no move",
            expected or "-",
            f"[{OUTCOME_COLORS.get(outcome, 'white')}]{outcome}[/]",
            *_value_cells(e),
        )
    con.print(t)


def _value_cells(e: LedgerEntry) -> tuple[str, str, str]:
    """Delivered value a day with its interval, cost (money when a rate is set), value per hour."""
    v = e.value
    if v is None:
        return "-", "-", "-"
    h = v.headline
    delivered = "-"
    if h is not None:
        delivered = f"{h.per_day:+,.1f} {h.unit}"
        if h.per_day_low is not None and h.per_day_high is not None:
            delivered += f" [{h.per_day_low:+,.1f}, {h.per_day_high:+,.1f}]"
    cost = f"{v.active_hours:.1f} h" + ("" if v.cost is None else f" / {v.cost:,.0f}")
    per_hour = "-" if v.value_per_hour is None or h is None else f"{v.value_per_hour:+,.2f}"
    return delivered, cost, per_hour
