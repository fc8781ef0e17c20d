"""The web view in a real browser: Debian's headless Chromium against a worker fed by the simulator,
and the static report of `valueloop replay --report` opened from disk.

One worker, one broker and one browser serve every page test; each page is loaded from the worker
and from the report, checked for the same things (stages, bottleneck, verdicts, charts), and saved
as a screenshot in test-output/screenshots/.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app import codec, simulate
from stream_app.core.valuestream import load_valuestream
from stream_app.producer import Sender, ensure_topics
from stream_app.settings import Settings
from tests.integration.workerproc import WorkerProc, start_worker, topic_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    (CHROMIUM is None or sync_playwright is None) and not os.environ.get("CI"),
    reason="needs Debian's chromium and the playwright package (.ci/run installs both)",
)

SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
SERVICES = ("checkout", "search")
STAGES = load_valuestream().stage_names()


def scenario() -> simulate.Scenario:
    """The demo's story for checkout and search, with coarse samples far from the releases.

    Checkout 1.4.2 drops conversion (the bad release; an incident and a rollback follow), search
    ships neutral releases and a flag change; work items wait longest for QA.
    """
    demo = simulate.demo_scenario(7)
    kept = [i for i, r in enumerate(demo.releases) if r.service in SERVICES]
    return dataclasses.replace(
        demo,
        services=tuple(s for s in demo.services if s.name in SERVICES),
        releases=tuple(demo.releases[i] for i in kept),
        incidents=tuple(
            dataclasses.replace(inc, release=kept.index(inc.release))
            for inc in demo.incidents
            if inc.release in kept
        ),
        # Coarse samples far from the releases and fewer latency observations: a quarter of
        # the events, the same verdicts (the bad release degraded on conversion at -9 %).
        coarse_seconds=900,
        detail_seconds=4500,
        latency_samples=3,
    )


@dataclasses.dataclass
class Fed:
    """The worker fed with the scenario, the report of the same events, and what to look for."""

    worker: WorkerProc
    report: Path
    bad_id: str
    bottleneck: str


def _wait_consumed(worker: WorkerProc, n: int, timeout: float = 180) -> None:
    roles = ("deployments", "telemetry", "workflow", "incidents")
    deadline = time.monotonic() + timeout
    done = 0.0
    while time.monotonic() < deadline:
        done = sum(
            worker.metric(f"valueloop_events_{kind}_total", topic=r)
            for r in roles
            for kind in ("accepted", "rejected")
        )
        if done >= n:
            return
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"worker consumed {done} of {n}")


@pytest.fixture(scope="module")
def fed(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp = tmp_path_factory.mktemp("web")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix), "VALUELOOP_APP_ID": f"{prefix}-app"}
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        **{k[len("VALUELOOP_") :].lower(): v for k, v in env.items()},
    )
    ensure_topics(settings)
    sc = scenario()
    events = list(simulate.generate(sc))
    src = tmp / "events.jsonl"
    src.write_bytes(b"".join(codec.encode(e) + b"\n" for e in events))
    bad = next(
        rid
        for rid, p in zip([r.id for r in simulate.releases(sc)], sc.releases, strict=True)
        if p.label == "bad"
    )
    assert sc.workflow is not None
    worker = start_worker(kafka_bootstrap, env, tmp)
    try:
        sender = Sender(settings)
        topics = settings.topic_names()
        for e in events:
            sender.send(topics[codec.role_of(e)], codec.encode(e), codec.key_of(e))
        sender.flush(60)
        del sender  # its client must not outlive the broker (it would log reconnects)
        # The report is written while the worker catches up: the same events, offline.
        report = tmp / "report.html"
        subprocess.run(
            [sys.executable, "-m", "stream_app", "replay", str(src), "--report", str(report)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        _wait_consumed(worker, len(events))
        yield Fed(worker, report, bad, sc.workflow.bottleneck)
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None and sync_playwright is not None
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # Debian's Chromium, never a downloaded one (`playwright install` is not used).
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(params=["worker", "report"])
def source(request: pytest.FixtureRequest, fed: Fed) -> tuple[str, str]:
    """(kind, base URL): the worker's pages, or the report file."""
    if request.param == "worker":
        return "worker", f"http://127.0.0.1:{fed.worker.port}/ui/"
    return "report", fed.report.as_uri()


class Visit:
    """A page of the browser that records every request it makes."""

    def __init__(self, browser: Browser, kind: str, base: str) -> None:
        self.kind, self.base = kind, base
        self.page: Page = browser.new_page(viewport={"width": 1360, "height": 900})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def open(self, page: str, arg: str = "", query: str = "") -> Page:
        if self.kind == "worker":
            url = f"{self.base}{page}" + (f"?{query}" if query else "")
        else:
            url = f"{self.base}#{page}" + (f"/{arg}" if arg else "")
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready=true]", timeout=20000)
        return self.page

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{self.kind}-{name}.png"), full_page=True)

    def close(self) -> None:
        try:
            assert not self.errors, self.errors
            if self.kind == "worker":
                host = self.base.split("/ui/")[0]
                assert all(u.startswith(host + "/ui/") for u in self.requests), self.requests
            else:
                # The report opens from disk and fetches nothing: one request, for itself.
                assert {u.split("#")[0] for u in self.requests} == {self.base}, self.requests
        finally:
            self.page.close()


@pytest.fixture
def visit(browser: Browser, source: tuple[str, str]) -> Iterator[Visit]:
    v = Visit(browser, *source)
    yield v
    v.close()


def test_value_stream_map_shows_stages_wip_and_the_bottleneck(visit: Visit, fed: Fed) -> None:
    page = visit.open("vsm", query="stream=checkout")
    assert page.input_value("#stream") == "checkout"
    boxes = page.locator("#vsm-map g.stage")
    assert [boxes.nth(i).get_attribute("data-stage") for i in range(boxes.count())] == list(STAGES)
    neck = page.locator('#vsm-map g.stage[data-bottleneck="true"]')
    assert neck.count() == 1 and neck.get_attribute("data-stage") == fed.bottleneck
    assert "BOTTLENECK" in (neck.text_content() or "")
    tile = page.locator("#bottleneck")
    assert tile.get_attribute("data-stage") == fed.bottleneck
    assert "items wait" in tile.inner_text()
    # Times drawn to scale: waiting and active bars, and the ladder of an average item.
    assert page.locator("#vsm-map rect.bar-waiting").count() > 0
    assert page.locator("#vsm-map rect.bar-active").count() > 0
    # WIP per stage adds up to the stream's work in progress.
    wip = sum(int(boxes.nth(i).get_attribute("data-wip") or 0) for i in range(boxes.count()))
    assert wip == int(page.inner_text("#wip .value")) > 0
    assert page.locator(f'#vsm-ladder g.ladder-seg[data-stage="{fed.bottleneck}"]').count() >= 1
    assert "%" in page.inner_text("#efficiency")
    visit.shot("value-stream-map")
    # Another value stream and period, re-rendered in place.
    page.select_option("#stream", "search")
    page.wait_for_selector('#vsm-map[data-stream="search"]')
    page.select_option("#period", "86400")
    page.wait_for_selector('#vsm-map[data-stream="search"][data-period="86400"]')
    assert page.locator("#vsm-map g.stage").count() == len(STAGES)


def test_releases_show_the_bad_release_degraded_with_its_charts(visit: Visit, fed: Fed) -> None:
    page = visit.open("releases", arg=fed.bad_id, query=f"release={fed.bad_id}")
    row = page.locator(f'tr.release-row[data-release-id="{fed.bad_id}"]')
    assert row.get_attribute("data-version") == "1.4.2"
    assert row.get_attribute("data-verdict") == "degraded"
    assert row.locator('td[data-kpi="conversion"] span').get_attribute("data-verdict") == "degraded"
    assert "selected" in (row.get_attribute("class") or "")
    marker = page.locator(f'#release-timeline g.release-marker[data-release-id="{fed.bad_id}"]')
    assert marker.get_attribute("data-verdict") == "degraded"
    # Every service's releases are on the timeline, each with a verdict.
    markers = page.locator("#release-timeline g.release-marker")
    assert markers.count() == page.locator("tr.release-row").count() >= 6
    detail = page.locator("#release-charts")
    assert detail.get_attribute("data-release-id") == fed.bad_id
    chart = detail.locator('svg.kpi-chart[data-kpi="conversion"]')
    assert chart.get_attribute("data-verdict") == "degraded"
    for series in ("baseline", "post", "reference"):
        d = chart.locator(f'path[data-series="{series}"]').get_attribute("d") or ""
        assert d.count("L") > 20, series  # a line through the window's buckets
    card = detail.locator('.kpi[data-kpi="conversion"]')
    assert "95% CI" in card.inner_text() and "reference: daily" in card.inner_text()
    assert card.locator("svg.ci-chart circle.ci-dot").count() == 1
    assert detail.locator("svg.kpi-chart").count() >= 6
    visit.shot("releases")
    # Another release, chosen on the page: its charts replace these.
    other = page.locator('tr.release-row[data-service="search"]').first
    other_id = other.get_attribute("data-release-id")
    other.click()
    page.wait_for_selector(f'#release-charts[data-release-id="{other_id}"]')


def test_dora_shows_five_metrics_levels_and_the_impact_failure(visit: Visit, fed: Fed) -> None:
    page = visit.open("dora")
    card = page.locator('.dora-service[data-service="checkout"]')
    metrics = card.locator(".tile[data-metric]")
    assert [metrics.nth(i).get_attribute("data-metric") for i in range(5)] == [
        "deployment-frequency",
        "lead-time",
        "change-failure-rate",
        "recovery-time",
        "rework-rate",
    ]
    assert card.locator("svg.sparkline").count() == 5
    # Each of the four keys has its DORA performance level, now and per trend slice; the bad
    # release failed (an incident, a rollback, a degraded KPI): no elite change failure rate.
    for metric in ("deployment-frequency", "lead-time", "change-failure-rate", "recovery-time"):
        tile = card.locator(f'.tile[data-metric="{metric}"]')
        assert tile.locator(".level[data-level]").count() == 1
        assert tile.locator(".level-trend i").count() == 7
    cfr = card.locator('.tile[data-metric="change-failure-rate"] .level')
    assert cfr.get_attribute("data-level") in ("high", "medium", "low")
    # Rework: the rollback of 1.4.2 is unplanned work.
    rework = card.locator('.tile[data-metric="rework-rate"]').inner_text()
    assert "1 rollback(s)" in rework and "%" in rework
    failure = card.locator(f'tr.failure[data-deployment-id="{fed.bad_id}"]')
    assert failure.get_attribute("data-from-impact") == "true"
    assert "conversion" in failure.inner_text() and "degraded-kpi" in failure.inner_text()
    assert page.locator('.dora-service[data-service="search"] tr.failure').count() == 0
    visit.shot("dora")


def test_served_pages_refresh_without_a_reload(browser: Browser, fed: Fed) -> None:
    v = Visit(browser, "worker", f"http://127.0.0.1:{fed.worker.port}/ui/")
    try:
        page = v.open("vsm")
        page.evaluate("window.__kept = 42")
        first = int(page.evaluate("document.body.dataset.refreshes"))
        # (The pages' policy forbids eval, so no wait_for_function: a selector polls instead.)
        page.wait_for_selector(f'body:not([data-refreshes="{first}"])', timeout=15000)
        assert page.evaluate("window.__kept") == 42  # same document: refreshed, not reloaded
        assert any("/ui/api/flow" in u for u in v.requests[1:])
        assert "refreshed" in page.inner_text("#status")
    finally:
        v.close()


def test_the_worker_serves_the_web_view_read_only(fed: Fed) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{fed.worker.port}/ui/api/flow", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 405
    status, body = fed.worker.get("/ui/api/release?id=nope")
    assert status == 404 and "error" in body
    assert fed.worker.get("/ui/static/app.css")[0] == 200
