"""`valueloop replay`: progress bar, summary tables and the verdict file."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stream_app.codec import encode_verdict
from stream_app.core.catalog import load_catalog
from stream_app.core.valuestream import load_valuestream
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, read_events, replay
from stream_app.settings import Settings

COLORS = {
    "degraded": "red",
    "improved": "green",
    "neutral": "white",
    "inconclusive": "yellow",
    "confounded": "magenta",
}


def run_replay(
    settings: Settings, files: list[Path], *, out: Path | None = None, quiet: bool = False
) -> ReplayOutcome:
    """Replay files through the worker's pipeline; print a summary; write verdicts to `out`."""
    con = Console(quiet=quiet)
    pipeline = Pipeline(
        load_catalog(settings.kpis_file),
        load_valuestream(settings.valuestream_file),
        report_period_seconds=settings.report_period_days * 86400.0,
    )
    result = ReplayOutcome()
    total = sum(p.stat().st_size for p in files)
    with Progress(console=con, transient=True, disable=quiet) as progress:
        task = progress.add_task("reading", total=total)
        events = []
        done = 0
        for ev in read_events(files, result, settings.max_message_bytes):
            events.append(ev)
            if len(events) % 20000 == 0:
                # File position is not exposed through gzip; estimate from events read.
                done = min(total, done + total // 100)
                progress.update(task, completed=done)
        progress.update(task, completed=total, description="judging")
        replay(events, pipeline, result)
    if out is not None:
        with out.open("wb") as fh:
            for rec in result.verdicts:
                fh.write(encode_verdict(rec) + b"\n")
    print_replay_summary(con, result)
    return result


def print_replay_summary(con: Console, result: ReplayOutcome) -> None:
    """Counts, final verdicts per release and KPI, pending releases."""
    con.print(
        f"decoded {result.decoded:,} events; rejected "
        f"{sum(result.rejected.values()):,} {dict(result.rejected) or ''}; "
        f"outcomes {dict(result.outcomes)}"
    )
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
