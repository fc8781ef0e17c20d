"""The web view's models, routes and static report, on a pipeline fed by a small simulated shop."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app import codec, simulate
from stream_app.core.catalog import load_catalog
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, replay
from stream_app.replay_cli import run_replay
from stream_app.settings import Settings
from stream_app.web import pages, routes, views, write_report

DAY = 86400.0
START = simulate.DEMO_START
BAD = START - 6 * 3600 + DAY + 10 * 3600  # 10:00 on day two


def small_scenario() -> simulate.Scenario:
    """Two services, a day of history, work items, and the demo's bad checkout release.

    Checkout 1.4.2 drops conversion by 10 % and is rolled back with an incident in between;
    items wait for QA longest (the simulator's injected bottleneck).
    """
    day = START - 6 * 3600 + DAY
    return simulate.Scenario(
        seed=3,
        start=START,
        duration_seconds=day + 14 * 3600 - START,
        services=(simulate.service_profile("checkout"), simulate.service_profile("search")),
        releases=(
            simulate.PlannedRelease(
                "checkout", BAD, "1.4.2", "deployed", {"conversion": -0.10}, label="bad"
            ),
            simulate.PlannedRelease("search", BAD + 600, "2.7.0", label="neutral"),
            simulate.PlannedRelease("checkout", BAD + 3 * 3600, "1.4.1", "rolledback"),
        ),
        incidents=(
            simulate.PlannedIncident(
                "checkout", detected=BAD + 35 * 60, resolved=BAD + 80 * 60, release=0
            ),
        ),
        workflow=simulate.WorkflowPlan(items_per_release=4, wip_items=3),
        coarse_seconds=900,
    )


@pytest.fixture(scope="module")
def scenario() -> simulate.Scenario:
    return small_scenario()


@pytest.fixture(scope="module")
def events(scenario: simulate.Scenario) -> list[codec.Decoded]:
    return list(simulate.generate(scenario))


def fed(events: list[codec.Decoded]) -> Pipeline:
    p = Pipeline(load_catalog())
    replay(events, p, ReplayOutcome())
    return p


@pytest.fixture(scope="module")
def pipeline(events: list[codec.Decoded]) -> Pipeline:
    return fed(events)


def bad_release(p: Pipeline) -> dict[str, Any]:
    rels = views.releases_view(p)["services"]["checkout"]
    return next(r for r in rels if r["version"] == "1.4.2")


def finite_json(x: Any) -> None:
    """Every number is finite (JSON has no inf or NaN), every key a string."""
    if isinstance(x, float):
        assert math.isfinite(x)
    elif isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, str)
            finite_json(v)
    elif isinstance(x, list):
        for v in x:
            finite_json(v)
    else:
        assert x is None or isinstance(x, str | int | bool), type(x)


# ------------------------------------------------------------------------------ value stream map


def test_value_stream_map_draws_the_stages_in_order_with_the_injected_bottleneck(
    pipeline: Pipeline, scenario: simulate.Scenario
) -> None:
    v = views.flow_view(pipeline, None, 7 * DAY)
    assert v["now"] == pipeline.max_event_time
    assert set(v["value_streams"]) == {"checkout", "search"}
    assert scenario.workflow is not None
    for vs, r in v["value_streams"].items():
        assert [s["stage"] for s in r["stages"]] == v["stages"], vs
        flagged = [s["stage"] for s in r["stages"] if s["bottleneck"]]
        assert flagged == [scenario.workflow.bottleneck] == [r["bottleneck"]["stage"]], vs
        neck = r["bottleneck"]
        assert neck["wait_p50"] > 3600 and neck["wait_p85"] >= neck["wait_p50"]
        assert sum(s["wip"] for s in r["stages"]) == r["open_items"]
        assert 0 < r["efficiency"] < 1 and r["finished"] > 0
        assert r["flow_time"]["p85"] >= r["flow_time"]["p50"] > 0
        assert not r["stages"][0]["in_flow"]  # the backlog is drawn, but is not flow time


def test_the_period_selects_which_finished_items_count(pipeline: Pipeline) -> None:
    week = views.flow_view(pipeline, None, 7 * DAY)["value_streams"]["checkout"]
    hour = views.flow_view(pipeline, None, 3600.0)["value_streams"]["checkout"]
    assert hour["finished"] < week["finished"]
    assert 7 * DAY in views.flow_view(pipeline, None, 3600.0)["periods"]


def test_views_before_any_event_are_empty_not_errors() -> None:
    p = Pipeline(load_catalog())
    assert views.flow_view(p, None, DAY)["value_streams"] == {}
    assert views.releases_view(p)["services"] == {}
    assert views.dora_view(p, None, DAY)["services"] == {}
    assert views.release_view(p, "nope") is None
    finite_json(views.report_bundle(p))


# ------------------------------------------------------------------------------ releases


def test_releases_show_the_bad_release_degraded_on_conversion(pipeline: Pipeline) -> None:
    v = views.releases_view(pipeline)
    assert set(v["services"]) == {"checkout", "search"}
    assert "conversion" in v["kpis"]
    bad = bad_release(pipeline)
    assert bad["finalized"] and bad["overall"] == "degraded"
    conv = bad["verdicts"]["conversion"]
    assert conv["verdict"] == "degraded" and conv["phase"] == "final"
    assert conv["ci_low"] <= conv["change"] <= conv["ci_high"] < 0
    search = v["services"]["search"][0]
    assert search["version"] == "2.7.0" and search["overall"] != "degraded"
    times = [r["time"] for r in v["services"]["checkout"]]
    assert times == sorted(times)


def test_a_release_chart_has_baseline_post_and_reference_windows(pipeline: Pipeline) -> None:
    bad = bad_release(pipeline)
    d = views.release_view(pipeline, bad["id"])
    assert d is not None and d["version"] == "1.4.2"
    charts = {k["kpi"]: k for k in d["kpis"]}
    assert list(charts) == [k.name for k in pipeline.catalog.for_service("checkout")]
    c = charts["conversion"]
    base, post = c["baseline"], c["post"]
    assert base["end"] <= bad["time"] <= post["start"]
    assert len(base["values"]) == round((base["end"] - base["start"]) / base["bucket_seconds"])
    assert sum(v is not None for v in post["values"]) >= 0.8 * len(post["values"])
    assert post["value"] < base["value"]  # the drop the verdict is about
    assert c["verdict"]["verdict"] == "degraded"
    assert c["verdict"]["change"] == bad["verdicts"]["conversion"]["change"]
    ref = c["reference"]
    assert ref is not None and ref["label"].startswith("daily")
    # The reference is drawn under the release's own windows: shifted by whole days.
    assert ref["lag_seconds"] > 0 and ref["lag_seconds"] % DAY == 0
    assert ref["baseline"]["start"] == base["start"]
    assert views.release_view(pipeline, "no-such-release") is None
    assert pipeline.engine.release_windows("no-such-release") == []


def test_an_open_release_shows_its_interim_verdicts(events: list[codec.Decoded]) -> None:
    # Fed up to 40 minutes after the bad release: its post window is still open.
    p = Pipeline(load_catalog())
    for ev in sorted(events, key=lambda e: e.time):
        if ev.time > BAD + 40 * 60:
            break
        p.handle(ev)
    bad = bad_release(p)
    assert not bad["finalized"]
    phases = {v["phase"] for v in bad["verdicts"].values()}
    # Some KPIs are still being watched (interim), while a large drop may be decided already.
    assert "interim" in phases
    d = views.release_view(p, bad["id"])
    assert d is not None
    post = next(k for k in d["kpis"] if k["kpi"] == "conversion")["post"]
    # The post window drawn is what the looks have read so far (not a window of zeros).
    assert 0 < len(post["values"]) <= 40 and None not in post["values"][:5]


# ------------------------------------------------------------------------------ DORA


def test_dora_shows_the_four_keys_with_a_trend_and_the_impact_failure(pipeline: Pipeline) -> None:
    v = views.dora_view(pipeline, None, 7 * DAY)
    co = v["services"]["checkout"]
    assert co["deployments"] == 1 and co["change_failure_rate"] == 1.0
    assert co["lead_time"]["p50"] > 0 and co["recovery_time"]["p50"] == pytest.approx(80 * 60)
    [f] = co["failures"]
    assert f["version"] == "1.4.2" and f["from_impact"] is True
    assert set(f["causes"]) == {"incident", "rollback", "degraded-kpi"}
    assert "conversion" in f["degraded_kpis"]
    assert len(co["trend"]) == views.TREND_POINTS
    ends = [p["end"] for p in co["trend"]]
    assert ends == sorted(ends) and ends[-1] == v["now"]
    assert co["trend"][-1]["deployments"] == 1 and co["trend"][0]["deployments"] == 0
    assert v["services"]["search"]["failures"] == []


# ------------------------------------------------------------------------------ determinism, JSON


def test_the_same_events_give_the_same_pages(
    pipeline: Pipeline, events: list[codec.Decoded]
) -> None:
    a = views.report_bundle(pipeline)
    b = views.report_bundle(fed(events))
    assert orjson.dumps(a) == orjson.dumps(b)
    finite_json(a)
    assert set(a["flow"]) == {str(int(p)) for p in views.periods(pipeline)}
    assert bad_release(pipeline)["id"] in a["release"]


def test_the_view_models_do_not_import_faust() -> None:
    code = (
        "import sys, stream_app.web.views; print(sorted({'faust', 'aiohttp'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ routes


def test_routes_serve_pages_assets_and_json(pipeline: Pipeline) -> None:
    for page in pages.PAGES:
        r = routes.respond(pipeline, f"/ui/{page}", {})
        assert r.status == 200 and r.content_type == "text/html"
        body = r.body.decode()
        assert f'data-page="{page}"' in body and '<script src="/ui/static/app.js">' in body
        assert "http://" not in body and "https://" not in body
        assert "'self'" in r.headers["Content-Security-Policy"]
    js = routes.respond(pipeline, "/ui/static/app.js", {})
    assert js.status == 200 and js.content_type == "text/javascript"
    assert routes.respond(pipeline, "/ui", {}).headers["Location"] == "/ui/vsm"
    flow = routes.respond(pipeline, "/ui/api/flow", {"period": "86400"})
    assert flow.status == 200 and orjson.loads(flow.body)["period_seconds"] == 86400.0
    dora = orjson.loads(routes.respond(pipeline, "/ui/api/dora", {}).body)
    assert dora["period_seconds"] == pipeline.report_period_seconds
    rels = orjson.loads(routes.respond(pipeline, "/ui/api/releases", {}).body)
    rid = rels["services"]["checkout"][0]["id"]
    one = routes.respond(pipeline, "/ui/api/release", {"id": rid})
    assert one.status == 200 and orjson.loads(one.body)["id"] == rid


@pytest.mark.parametrize(
    ("path", "query", "status"),
    [
        ("/ui/api/flow", {"period": "soon"}, 400),
        ("/ui/api/flow", {"period": "-1"}, 400),
        ("/ui/api/dora", {"period": "nan"}, 400),
        ("/ui/api/dora", {"period": "1e12"}, 400),
        ("/ui/api/release", {"id": "nope"}, 404),
        ("/ui/api/release", {}, 404),
        ("/ui/static/../../settings.py", {}, 404),
        ("/ui/nothing", {}, 404),
    ],
)
def test_bad_requests_get_a_clear_status(
    pipeline: Pipeline, path: str, query: dict[str, str], status: int
) -> None:
    r = routes.respond(pipeline, path, query)
    assert r.status == status and "error" in orjson.loads(r.body)


# ------------------------------------------------------------------------------ static report


def embedded(html: str) -> Any:
    m = re.search(r'<script id="valueloop-data" type="application/json">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


def test_the_report_is_one_self_contained_file(pipeline: Pipeline, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    bundle = write_report(pipeline, out, "t")
    html = out.read_text(encoding="utf-8")
    assert embedded(html) == json.loads(orjson.dumps(bundle))
    # Nothing to fetch: no element loading a file, no URL (but the SVG namespace), and a policy
    # that forbids any connection.
    assert not re.search(r'<(script|link|img|iframe)[^>]*\s(src|href)\s*=\s*"(?!data:)', html, re.I)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)
    assert "default-src 'none'" in html
    assert html.count("<script") == 2 and html.count("<style>") == 1


def test_embedded_data_cannot_close_its_script_element() -> None:
    evil = {"version": "</script><script>alert(1)</script><!--"}
    text = pages.embed_json(evil)
    assert "<" not in text and json.loads(text) == evil


def test_replay_writes_the_report(events: list[codec.Decoded], tmp_path: Path) -> None:
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(codec.encode(e) + b"\n" for e in events))
    out = tmp_path / "r.html"
    run_replay(Settings(), [src], report=out, quiet=True)
    data = embedded(out.read_text(encoding="utf-8"))
    assert data["title"] == "valueloop report: events.jsonl"
    checkout = data["releases"]["services"]["checkout"]
    assert [r["overall"] for r in checkout if r["version"] == "1.4.2"] == ["degraded"]


def test_the_demo_summary_lists_the_web_view() -> None:
    import socket

    from rich.console import Console

    from stream_app.demo import print_summary

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    con = Console(record=True, width=200)
    url = f"http://127.0.0.1:{port}"  # nothing answers: the summary still names the pages
    print_summary(con, {}, {}, {}, url, None)
    text = con.export_text()
    for page in ("vsm", "releases", "dora"):
        assert f"{url}/ui/{page}" in text
