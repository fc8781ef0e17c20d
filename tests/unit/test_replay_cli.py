"""`valueloop replay` in scripts and CI: its own options, exit status, summary, wide tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from stream_app import codec, simulate
from stream_app.__main__ import app

DAY = 86400.0
START = simulate.DEMO_START
BAD = START - 6 * 3600 + DAY + 10 * 3600
BUNDLED = Path(__file__).resolve().parents[2] / "stream_app" / "data" / "kpis.toml"
runner = CliRunner()


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A day and a half of two services with a bad checkout release, work items, an incident."""
    scenario = simulate.Scenario(
        seed=3,
        start=START,
        duration_seconds=DAY + 8 * 3600,
        services=(simulate.service_profile("checkout"), simulate.service_profile("search")),
        releases=(
            simulate.PlannedRelease(
                "checkout", BAD, "1.4.2", "deployed", {"conversion": -0.10}, label="bad"
            ),
            simulate.PlannedRelease("search", BAD + 600, "2.7.0", label="neutral"),
        ),
        incidents=(
            simulate.PlannedIncident(
                "checkout", detected=BAD + 35 * 60, resolved=BAD + 80 * 60, release=0
            ),
        ),
        workflow=simulate.WorkflowPlan(items_per_release=4, wip_items=3),
        coarse_seconds=900,
    )
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    path.write_bytes(b"".join(codec.encode(e) + b"\n" for e in simulate.generate(scenario)))
    return path


def _text(result: Result) -> str:
    try:
        return result.output + result.stderr
    except ValueError:  # older click: stderr mixed into output
        return result.output


def conversion_only(tmp_path: Path) -> Path:
    """The bundled catalog with the conversion KPI only: other sample streams are unknown."""
    head, *blocks = BUNDLED.read_text().split("\n[[kpi]]\n")
    kept = [b for b in blocks if 'name = "conversion"' in b]
    assert len(kept) == 1
    path = tmp_path / "kpis.toml"
    path.write_text(head + "\n[[kpi]]\n" + kept[0])
    return path


def test_replay_takes_the_catalog_and_writes_the_summary(events_file: Path, tmp_path: Path) -> None:
    summary = tmp_path / "s.json"
    args = ["replay", "--kpis", str(conversion_only(tmp_path)), "--summary-out", str(summary)]
    result = runner.invoke(app, [*args, "--max-rejected", "100", str(events_file)])
    assert result.exit_code == 0, _text(result)
    s = json.loads(summary.read_text())
    # The catalog given to `replay` itself is the one used: conversion is the only KPI judged,
    # and the samples of the other streams are refused as the worker would refuse them.
    assert {v["kpi"] for v in s["verdicts"]} == {"conversion"}
    bad = [v for v in s["verdicts"] if v["service"] == "checkout" and v["version"] == "1.4.2"]
    assert [v["verdict"] for v in bad] == ["degraded"]
    assert s["input"]["rejected_by_reason"]["unknown-stream"] > 0
    assert len(s["input"]["examples"]["unknown-stream"]) == 3
    assert s["input"]["lines"] == sum(1 for line in events_file.open("rb") if line.strip())
    # DORA, flow and ledger figures, as the tables show them.
    assert s["dora"]["checkout"]["deployments"] == 1
    assert s["dora"]["checkout"]["incidents"][0]["deployment_id"] is not None
    assert {"checkout", "search"} <= set(s["flow"])
    assert s["flow"]["checkout"]["stages"]
    assert any(e["service"] == "checkout" and e["degraded"] for e in s["ledger"])
    # Without --max-rejected the same refusals fail the run.
    again = runner.invoke(app, [*args, "--quiet", str(events_file)])
    assert again.exit_code == 1
    assert "more than --max-rejected 0 %" in _text(again)


def test_rejected_lines_fail_the_replay_with_examples(events_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = events_file.read_bytes()
    n = good.count(b"\n")
    bad.write_bytes(good + b"not json\n" + b'{"v": 1, "service": "checkout"\n')
    result = runner.invoke(app, ["replay", str(bad)])
    text = _text(result)
    assert result.exit_code == 1, text
    assert f"2 of {n + 2:,} lines rejected" in text
    assert f"{bad}:{n + 1}: not json" in text  # the line itself, where it is
    assert f"{bad}:{n + 2}: " in text and "truncated" in text
    loose = runner.invoke(app, ["replay", "--quiet", "--max-rejected", "0.5", str(bad)])
    assert loose.exit_code == 0, _text(loose)
    # Every line rejected: a failure, not an empty success.
    only_bad = tmp_path / "only-bad.jsonl"
    only_bad.write_bytes(b"not json\n")
    out = tmp_path / "v.jsonl"
    failed = runner.invoke(app, ["replay", "--quiet", "--out", str(out), str(only_bad)])
    assert failed.exit_code == 1


def test_tables_are_not_truncated_when_stdout_is_not_a_terminal(
    events_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    wide = runner.invoke(app, ["replay", str(events_file)])
    assert wide.exit_code == 0, _text(wide)
    assert "…" not in wide.output
    assert max(len(line) for line in wide.output.splitlines()) > 120
    assert "[red]" not in wide.output and "\x1b[" not in wide.output  # no markup, no colours
    # An explicit width is still honoured (and at 80 columns rich would truncate cells).
    monkeypatch.setenv("COLUMNS", "80")
    narrow = runner.invoke(app, ["replay", str(events_file)])
    assert "…" in narrow.output


def test_replay_prints_the_ledger_and_writes_the_records_the_worker_publishes(
    events_file: Path, tmp_path: Path
) -> None:
    from stream_app.core.catalog import load_catalog
    from stream_app.events.ledger import encode_ledger
    from stream_app.pipeline import Pipeline

    out = tmp_path / "ledger.jsonl"
    result = runner.invoke(
        app,
        ["replay", "--ledger-out", str(out), "--cost-per-hour", "90", str(events_file)],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, _text(result)
    text = _text(result)
    assert "Value ledger" in text and "orders" in text  # delivered a day, in orders
    lines = out.read_bytes().splitlines()
    # The worker's core, event by event in time order, publishes these records to vsm.ledger.
    pipeline = Pipeline(load_catalog(), cost_per_hour=90.0)
    published: list[bytes] = []
    events = [codec.decode_any(line) for line in events_file.read_bytes().splitlines()]
    for decoded in sorted(events, key=lambda e: e.time):  # type: ignore[union-attr]
        assert not isinstance(decoded, codec.Rejected)
        published += [encode_ledger(e) for e in pipeline.handle(decoded).ledger]
    published += [encode_ledger(e) for e in pipeline.close_input().ledger]
    assert lines == published and lines
    bad = [json.loads(x) for x in lines if b'"1.4.2"' in x][-1]
    assert bad["value"]["headline_kpi"] in ("conversion", "orders", "revenue")
    assert bad["value"]["cost"] == pytest.approx(bad["value"]["active_hours"] * 90)
