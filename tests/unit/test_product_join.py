"""The product join: every release of a member service judged on its product's KPIs too."""

from __future__ import annotations

from collections.abc import Iterable

from stream_app.core.catalog import parse_catalog
from stream_app.core.impact import ImpactEngine
from stream_app.core.types import VerdictRecord
from stream_app.core.valuestream import load_valuestream
from stream_app.events.model import KpiSample, Release
from stream_app.metrics import Metrics
from stream_app.pipeline import Pipeline
from tests.unit.test_impact_engine import stub_judge

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86400)
MIN = 60.0
SERVICES = ("search", "cart", "checkout")

CATALOG = parse_catalog(
    """
[defaults]
baseline = "30m"
post = "30m"
max_horizon = "30m"
overlap = "30m"
bucket = "1m"
allowed_lateness = "2m"
min_buckets = 5
min_samples = 10
seasonality = "none"

[[kpi]]
name = "conversion"
aggregation = "ratio"
numerator = "orders"
denominator = "sessions"
level = "product"
critical = true

[[kpi]]
name = "latency_p95"
aggregation = "quantile"
stream = "latency_ms"
quantile = 0.95
direction = "down"
""",
    source="test-kpis.toml",
).with_products({"shop": SERVICES})


def rel(service: str, t: float, rid: str | None = None) -> Release:
    return Release(rid or f"{service}@{t:g}", service, "1.0", t, "deployed")


def traffic(t_end: float, lift: dict[float, float]) -> list[KpiSample]:
    """Shop samples every minute from T0 (conversion 5 %, times (1 + lift) after each time in
    `lift`), sent by the web front end with product "shop"; latency 100 ms of every service."""
    out: list[KpiSample] = []
    t = T0
    while t < t_end:
        factor = 1.0 + sum(v for at, v in lift.items() if t >= at)
        out.append(KpiSample("web", "sessions", t, 1000.0, 1000.0, product="shop"))
        out.append(KpiSample("web", "orders", t, 50.0 * factor, 50.0, product="shop"))
        for svc in SERVICES:
            out.append(KpiSample(svc, "latency_ms", t, 100.0, 20.0))
        t += MIN
    return out


def finals(records: Iterable[VerdictRecord]) -> dict[tuple[str, str], VerdictRecord]:
    """The latest final record per (release, KPI)."""
    out: dict[tuple[str, str], VerdictRecord] = {}
    for r in records:
        if r.phase == "final":
            out[(r.release_id, r.kpi)] = r
    return out


def run(events: list[KpiSample | Release]) -> dict[tuple[str, str], VerdictRecord]:
    eng = ImpactEngine(CATALOG, judge=stub_judge, interim_every_buckets=0)
    recs: list[VerdictRecord] = []
    for ev in sorted(events, key=lambda e: e.time):
        if isinstance(ev, Release):
            recs.extend(eng.on_release(ev))
        else:
            assert eng.on_sample(ev) == "accepted"
            recs.extend(eng.advance())
    recs.extend(eng.close_input())
    return finals(recs)


def test_a_service_release_is_judged_on_its_product_kpi_and_its_own() -> None:
    t = T0 + 60 * MIN
    got = run([rel("search", t), *traffic(T0 + 120 * MIN, {t: 0.2})])
    conv = got[("search@" + f"{t:g}", "conversion")]
    assert (conv.product, conv.service, conv.kpi) == ("shop", "search", "conversion")
    assert conv.judgement.verdict == "improved"
    assert abs(conv.judgement.change - 0.2) < 1e-9
    lat = got[("search@" + f"{t:g}", "latency_p95")]
    assert (lat.product, lat.service, lat.judgement.verdict) == ("shop", "search", "neutral")


def test_overlapping_releases_of_two_member_services_confound_each_other() -> None:
    a, b, c = T0 + 60 * MIN, T0 + 70 * MIN, T0 + 150 * MIN
    events = [rel("cart", a), rel("checkout", b), rel("search", c)]
    got = run([*events, *traffic(T0 + 200 * MIN, {a: 0.1, c: -0.1})])
    cart, checkout, search = (f"cart@{a:g}", f"checkout@{b:g}", f"search@{c:g}")
    assert got[(cart, "conversion")].judgement.verdict == "confounded"
    assert got[(cart, "conversion")].judgement.confounders == (checkout,)
    assert got[(checkout, "conversion")].judgement.confounders == (cart,)
    # Service KPIs stay per service: other services' releases do not confound them.
    assert got[(cart, "latency_p95")].judgement.verdict == "neutral"
    assert got[(checkout, "latency_p95")].judgement.verdict == "neutral"
    # A release of a third service, alone in its windows, is judged on the product's KPI.
    assert got[(search, "conversion")].judgement.verdict == "degraded"
    assert got[(search, "conversion")].service == "search"


def test_a_product_sample_without_product_counts_for_its_services_product() -> None:
    t = T0 + 60 * MIN
    samples = [
        KpiSample("checkout", s.kpi, s.time, s.value, s.count) if s.product else s
        for s in traffic(T0 + 120 * MIN, {t: -0.3})
    ]
    got = run([rel("cart", t), *samples])
    assert got[(f"cart@{t:g}", "conversion")].judgement.verdict == "degraded"
    assert got[(f"cart@{t:g}", "conversion")].product == "shop"


def pipeline(forward: bool) -> Pipeline:
    p = Pipeline(CATALOG, load_valuestream())
    p.engine = ImpactEngine(p.catalog, judge=stub_judge, interim_every_buckets=0)
    p.forward_product_releases = forward
    return p


def test_a_release_forwarded_to_its_products_partition_gets_the_same_verdicts() -> None:
    a, b = T0 + 60 * MIN, T0 + 75 * MIN
    releases = [rel("cart", a), rel("checkout", b)]
    samples = traffic(T0 + 150 * MIN, {a: 0.1})
    whole = pipeline(False)
    recs = [r for ev in [*releases, *samples] for r in whole.handle(ev).records]
    recs += whole.close_input().records
    # The worker: releases reach the service's state where they come in, and the product's
    # state later (forwarded), after some of the product's samples were read.
    split = pipeline(True)
    out = [r for ev in releases for r in split.handle(ev).records]
    assert not [r for r in out if r.kpi == "conversion"]
    out += [r for ev in samples[:40] for r in split.handle(ev).records]
    out += [r for ev in releases for r in split.handle_product_release(ev).records]
    out += [r for ev in samples[40:] for r in split.handle(ev).records]
    out += split.close_input().records
    assert finals(out) == finals(recs)
    assert finals(out)[(f"cart@{a:g}", "conversion")].judgement.verdict == "confounded"
    # The product's state is one key, snapshotted and restored like a service's.
    snap = split.snapshot_service("product:shop")
    again = pipeline(True)
    again.restore_service("product:shop", snap)
    assert again.engine.release_states("product:shop") == split.engine.release_states(
        "product:shop"
    )


def test_verdict_series_carry_product_service_and_kpi() -> None:
    t = T0 + 60 * MIN
    got = run([rel("search", t), *traffic(T0 + 120 * MIN, {t: 0.2})])
    m = Metrics()
    for rec in got.values():
        m.observe_verdict(rec)
    labels = {"product": "shop", "service": "search", "kpi": "conversion"}
    assert (
        m.registry.get_sample_value(
            "valueloop_verdicts_total", {**labels, "verdict": "improved", "phase": "final"}
        )
        == 1.0
    )


def test_the_releases_page_lists_each_release_once_per_product_with_both_levels() -> None:
    from stream_app.web import views

    a, b = T0 + 60 * MIN, T0 + 75 * MIN
    p = pipeline(False)
    for ev in [rel("cart", a), rel("checkout", b), *traffic(T0 + 150 * MIN, {a: 0.1})]:
        p.handle(ev)
    p.close_input()
    view = views.releases_view(p)
    assert view["products"] == {"shop": ["cart", "checkout"]}
    assert set(view["kpis"]) == {"latency_p95", "conversion"}
    cart = view["services"]["cart"]
    assert len(cart) == 1 and cart[0]["product"] == "shop" and cart[0]["finalized"]
    assert cart[0]["verdicts"]["conversion"]["verdict"] == "confounded"
    assert cart[0]["verdicts"]["conversion"]["confounders"] == [f"checkout@{b:g}"]
    assert cart[0]["verdicts"]["latency_p95"]["verdict"] == "neutral"
    detail = views.release_view(p, f"cart@{a:g}")
    assert detail is not None and detail["product"] == "shop"
    assert sorted(c["kpi"] for c in detail["kpis"]) == ["conversion", "latency_p95"]
    assert {c["kpi"]: c["verdict"]["verdict"] for c in detail["kpis"]}["conversion"] == "confounded"


def test_the_demo_measures_the_shops_business_kpis_per_product() -> None:
    from pathlib import Path

    from stream_app import codec, demo, simulate
    from stream_app.core.catalog import parse_catalog
    from stream_app.core.valuestream import parse_valuestream

    data = Path(demo.__file__).parent / "data"
    cat = parse_catalog(demo.shop_catalog_text((data / "kpis.toml").read_text()))
    assert {k.name for k in cat.kpis if k.level == "product"} == set(demo.SHOP_KPIS)
    sc = simulate.demo_scenario(7)
    names = [s.name for s in sc.services]
    base = (data / "valuestream.toml").read_text()
    vs = parse_valuestream(demo.shop_valuestream_text(base, names))
    assert vs.value_streams == {"shop": tuple(names)}
    orders = KpiSample("search", "orders", T0, 3.0, 3.0)
    shop = demo.as_shop_event(orders)
    assert shop.product == "shop" and codec.key_of(shop) == b"shop"
    latency = KpiSample("search", "latency_ms", T0, 80.0)
    assert demo.as_shop_event(latency) is latency and codec.key_of(latency) == b"search"


def test_a_scoped_release_is_judged_on_its_scope_of_the_product_with_the_rest_as_control() -> None:
    t = T0 + 60 * MIN
    eu = Release("cart-eu", "cart", "1.1", t, "deployed", scope={"region": "eu"})
    samples: list[KpiSample] = []
    for m in range(120):
        ts = T0 + m * MIN
        for region in ("eu", "us"):
            lift = 1.2 if region == "eu" and ts >= t else 1.0
            labels = {"region": region}
            samples.append(KpiSample("web", "sessions", ts, 500.0, 500.0, labels, product="shop"))
            samples.append(
                KpiSample("web", "orders", ts, 25.0 * lift, 25.0, labels, product="shop")
            )
    got = run([eu, *samples])
    rec = got[("cart-eu", "conversion")]
    assert rec.extra.get("scope") == "region=eu"
    assert rec.judgement.reference == "control"  # the rest of the shop's traffic
    assert rec.judgement.verdict == "improved" and rec.product == "shop"


def test_a_bet_on_the_products_kpi_is_settled_by_the_product_verdict() -> None:
    # A member service's release declares a bet on the product's conversion: in one pipeline
    # (replay, or a worker owning both partitions) the product's final verdict settles it.
    from stream_app.events.model import Expectation

    t = T0 + 60 * MIN
    bet = Expectation("conversion", "up", 0.1)
    p = pipeline(False)
    release = Release(f"search@{t:g}", "search", "1.0", t, "deployed", expect=(bet,))
    assert p.handle(release).outcome == "accepted"
    for ev in traffic(T0 + 120 * MIN, {t: 0.2}):
        p.handle(ev)
    p.close_input()
    (entry,) = p.ledger_entries(release.id)
    assert entry.expectations == ((bet, "met"),)
    assert [k.kpi for k in entry.kpis if k.kpi == "conversion"] == ["conversion"]
    # A bet on a KPI neither the service nor its product has is refused with its reason.
    odd = Release(
        "x", "search", "1.1", t + MIN, "deployed", expect=(Expectation("nps", "up", 0.1),)
    )
    assert p.handle(odd).outcome == "bad-expectation"
