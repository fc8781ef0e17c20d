"""Bets declared every way on the simulator's shop, judged by a worker on the real broker, seen in a
real browser on /ui/value and in the static report of `valueloop replay --report`.

The shop (checkout and search, the demo's story) carries four bets:

- checkout 1.4.2, declared in its deployment event's customData: conversion +3 %; the release
  drops conversion 8 %: went the other way;
- checkout 1.5.0, declared on a work item it ships (the item's customData): revenue +5 %; it
  raises revenue about 7 %: met;
- search 2.7.1, sent with `valueloop emit deployment ... --expect error_rate:-10%`: error rate
  does not move: not met;
- a checkout work item still waiting for QA, declared in the features file: revenue +2 %: in
  progress, with its cost so far.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app import codec, simulate
from stream_app.events.model import Expectation, Release, WorkflowEvent
from stream_app.producer import Sender, ensure_topics
from stream_app.settings import Settings
from tests.integration.test_web_browser import CHROMIUM, SHOTS, scenario, sync_playwright
from tests.integration.workerproc import WorkerProc, consume_all, start_worker, topic_env

pytestmark = [
    pytest.mark.skipif(
        (CHROMIUM is None or sync_playwright is None) and not os.environ.get("CI"),
        reason="needs Debian's chromium and the playwright package (.ci/run installs both)",
    ),
    # The fixture feeds a day and a half of the shop to the worker and waits for its verdicts.
    pytest.mark.timeout(900),
]

WIP_ITEM = "sim7-item0011"  # waits for QA at the end of the story
RATE = 120.0  # money per engineering hour


@dataclasses.dataclass
class Story:
    worker: WorkerProc
    report: Path
    ids: dict[str, str]  # bet name -> release id
    bootstrap: str
    deadletter: str  # the dead-letter topic
    bad_bets: list[bytes]  # deployments whose bets cannot be used


def _bad_bets(r: Release) -> list[bytes]:
    """A bet without a sign (refused when decoded) and one on a KPI the catalog does not judge
    (refused by the core): both deployments go to the dead-letter topic."""
    out = []
    for i, (kpi, change) in enumerate([("conversion", "3%"), ("conversoin", "+3%")]):
        doc = orjson.loads(codec.encode(_with(r, id=f"{r.id}-bad{i}", version=f"9.9.{i}")))
        doc["customData"] = {"valueloop": {"expect": [{"kpi": kpi, "change": change}]}}
        out.append(orjson.dumps(doc))
    return out


def _with(ev: Any, **changes: Any) -> Any:
    return dataclasses.replace(ev, **changes)


def _wait(worker: WorkerProc, predicate: Any, timeout: float = 600) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = worker.get("/ui/api/value")
        if status == 200:
            doc = orjson.loads(body)
            if predicate(doc):
                return doc
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        time.sleep(1)
    bets = [(b["kind"], b["version"], b["outcome"]) for b in doc.get("bets", [])]
    consumed = {
        r: worker.metric("valueloop_events_accepted_total", topic=r)
        for r in ("deployments", "telemetry", "workflow", "incidents")
    }
    raise AssertionError(f"value page never got there: bets {bets}, accepted {consumed}")


@pytest.fixture(scope="module")
def story(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    tmp = tmp_path_factory.mktemp("value")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    features = tmp / "features.toml"
    features.write_text(
        f'[[feature]]\nname = "saved carts"\nitem = "{WIP_ITEM}"\n'
        'kpi = "revenue"\ndirection = "up"\nchange = "2%"\n'
    )
    env = {
        **topic_env(prefix),
        "VALUELOOP_APP_ID": f"{prefix}-app",
        "VALUELOOP_FEATURES_FILE": str(features),
        "VALUELOOP_COST_PER_HOUR": str(RATE),
        "VALUELOOP_CURRENCY": "EUR",
    }
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        **{k[len("VALUELOOP_") :].lower(): v for k, v in env.items()},
    )
    ensure_topics(settings)
    # An hour more of traffic than the browser test's story: the worker judges a release only
    # once event time has passed its horizon (replay closes the input instead), and the last
    # release, search 2.7.1 at 17:00, has a 4 h horizon.
    sc0 = scenario()
    sc = dataclasses.replace(sc0, duration_seconds=sc0.duration_seconds + 3600)
    rels = {(r.service, r.version): r for r in simulate.releases(sc)}
    bad, good, neutral = (
        rels["checkout", "1.4.2"],
        rels["checkout", "1.5.0"],
        rels["search", "2.7.1"],
    )
    item = good.change_ids[0]
    cli = _with(neutral, expect=(Expectation("error_rate", "down", 0.10),))
    events: list[codec.Decoded] = []
    for e in simulate.generate(sc):
        if isinstance(e, Release) and e.id == bad.id:
            e = _with(e, expect=(Expectation("conversion", "up", 0.03),))  # customData
        elif isinstance(e, WorkflowEvent) and e.item_id == item and e.source_type == "workitem":
            e = _with(e, expect=(Expectation("revenue", "up", 0.05),))  # the work item's
        elif isinstance(e, Release) and e.id == neutral.id:
            e = cli  # sent by `valueloop emit deployment --expect` below
        events.append(e)
    src = tmp / "events.jsonl"
    src.write_bytes(b"".join(codec.encode(e) + b"\n" for e in events))
    worker = start_worker(kafka_bootstrap, env, tmp)
    try:
        sender = Sender(settings)
        topics = settings.topic_names()
        for e in events:
            if e is cli:
                sender.flush(60)
                args = [
                    "emit",
                    "deployment",
                    "--service",
                    cli.service,
                    "--version",
                    cli.version,
                    "--time",
                    repr(cli.time),
                    "--id",
                    cli.id,
                    "--expect",
                    "error_rate:-10%",
                ]
                for c in cli.commits:
                    args += ["--commit", c]
                for c in cli.change_ids:
                    args += ["--change-id", c]
                done = subprocess.run(
                    [sys.executable, "-m", "stream_app", *args],
                    env={**os.environ, **env, "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert done.returncode == 0, done.stdout + done.stderr
                continue
            sender.send(topics[codec.role_of(e)], codec.encode(e), codec.key_of(e))
        bad_bets = _bad_bets(bad)
        for value in bad_bets:
            sender.send(topics["deployments"], value, bad.service)
        sender.flush(60)
        del sender
        report = tmp / "report.html"
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "stream_app",
                "replay",
                str(src),
                "--report",
                str(report),
                "--features",
                str(features),
                "--cost-per-hour",
                str(RATE),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "VALUELOOP_CURRENCY": "EUR", "COLUMNS": "300"},
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Value ledger" in out.stdout
        ids = {"other-way": bad.id, "met": good.id, "not-met": neutral.id}
        _wait(
            worker,
            lambda d: (
                {b["release_id"]: b["outcome"] for b in d["bets"] if b["kind"] == "release"}
                == {bad.id: "went-the-other-way", good.id: "met", neutral.id: "not-met"}
            ),
        )
        yield Story(worker, report, ids, kafka_bootstrap, topics["deadletter"], bad_bets)
    finally:
        worker.stop()


def _check_page(page: Any, story: Story) -> None:
    rows = page.locator("#bet-table tr.bet-row")
    by_release: dict[str, Any] = {}
    ranks = []
    for i in range(rows.count()):
        row = rows.nth(i)
        ranks.append(int(row.get_attribute("data-rank") or 0))
        if not row.get_attribute("data-item-id"):
            by_release[row.get_attribute("data-release-id") or ""] = row
    assert ranks == list(range(1, rows.count() + 1))  # ranked, best first
    expected = {"other-way": "went-the-other-way", "met": "met", "not-met": "not-met"}
    for name, outcome in expected.items():
        row = by_release[story.ids[name]]
        assert row.get_attribute("data-outcome") == outcome, name
        chip = row.locator(".chip[data-outcome]")
        assert chip.get_attribute("data-outcome") == outcome
        # Expected vs delivered: the bet, the estimate and its interval, drawn.
        svg = row.locator("svg.bet-chart")
        assert svg.count() == 1
        assert svg.locator('[data-series="expected"]').count() == 1
        assert svg.locator('[data-series="delivered"]').count() == 1
        assert svg.locator('[data-series="interval"]').count() == 1
        text = row.inner_text()
        assert "expected" in text and "delivered" in text
        # Cost: active hours and money at the configured rate.
        cost = row.locator("td.cost").inner_text()
        assert "h active" in cost and "EUR" in cost, cost
    met, other = by_release[story.ids["met"]], by_release[story.ids["other-way"]]
    assert float(met.locator("svg.bet-chart").get_attribute("data-delivered") or 0) >= 0.05
    assert float(other.locator("svg.bet-chart").get_attribute("data-delivered") or 0) < 0
    # The bet that paid off ranks above the one that went the other way.
    assert int(met.get_attribute("data-rank") or 0) < int(other.get_attribute("data-rank") or 0)
    assert "orders/day" in other.inner_text()  # conversion in business units
    # Work in progress: the features file's bet on an item still waiting for QA.
    wip = page.locator(f'#wip-table tr.wip-row[data-item-id="{WIP_ITEM}"]')
    assert wip.count() == 1
    assert "revenue +2.0%" in wip.inner_text() and "EUR" in wip.inner_text()
    # Portfolio per service.
    assert page.locator('#portfolio .portfolio[data-service="checkout"]').count() == 1


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM is not None and sync_playwright is not None
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


def _open(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    page.wait_for_selector("#bet-table", timeout=20000)
    return page, errors


def test_a_real_browser_shows_every_bet_on_the_value_page(browser: Any, story: Story) -> None:
    page, errors = _open(browser, f"http://127.0.0.1:{story.worker.port}/ui/value")
    try:
        _check_page(page, story)
        page.screenshot(path=str(SHOTS / "worker-value.png"), full_page=True)
        # Linked from the Releases page (a release's bets) and the map (a stage's items).
        page.goto(f"http://127.0.0.1:{story.worker.port}/ui/releases")
        page.wait_for_selector("body[data-ready=true]")
        row = page.locator(f'tr.release-row[data-release-id="{story.ids["met"]}"]')
        link = row.locator("a.bets-link")
        assert "revenue +5.0%" in link.inner_text()
        link.click()
        page.wait_for_selector(f'tr.bet-row.selected[data-release-id="{story.ids["met"]}"]')
        page.goto(f"http://127.0.0.1:{story.worker.port}/ui/vsm?stream=checkout")
        page.wait_for_selector("body[data-ready=true]")
        page.locator('#stage-bets a.stage-bets[data-stage="waiting-for-qa"]').click()
        page.wait_for_selector(f'#wip-table tr.wip-row[data-item-id="{WIP_ITEM}"]')
        assert not errors, errors
    finally:
        page.close()


def test_the_static_report_shows_the_same_bets_offline(browser: Any, story: Story) -> None:
    page, errors = _open(browser, story.report.as_uri() + "#value")
    try:
        _check_page(page, story)
        page.screenshot(path=str(SHOTS / "report-value.png"), full_page=True)
        assert not errors, errors
    finally:
        page.close()
    docs = Path(__file__).resolve().parents[2] / "docs" / "img" / "value.png"
    if os.environ.get("VALUELOOP_UPDATE_DOCS"):  # refresh the README's screenshot on request
        shutil.copy(SHOTS / "report-value.png", docs)


def test_bets_that_cannot_be_used_are_dead_lettered_with_a_reason(story: Story) -> None:
    dead = consume_all(story.bootstrap, story.deadletter, len(story.bad_bets), timeout=120)
    got = {m.value(): dict(m.headers()) for m in dead}  # type: ignore[attr-defined]
    for value in story.bad_bets:
        assert got[value]["valueloop.reason"] == b"bad-expectation"
    n = story.worker.wait_for(
        "valueloop_events_rejected_total",
        len(story.bad_bets),
        topic="deployments",
        reason="bad-expectation",
    )
    assert n == len(story.bad_bets)
