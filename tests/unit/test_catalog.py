"""KPI catalog: the bundled example, defaults, and start-up validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.core.catalog import (
    DAY_SECONDS,
    WEEK_SECONDS,
    load_catalog,
    parse_catalog,
    parse_duration,
    parse_fraction,
)
from stream_app.errors import ConfigError

MINIMAL = """
[[kpi]]
name = "orders"
aggregation = "sum"
"""


def kpi_block(**fields: object) -> str:
    """A [[kpi]] table with the given TOML values (strings quoted, lists/bools as TOML)."""
    lines = ["[[kpi]]"]
    for key, value in fields.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = f'"{value}"'
        elif isinstance(value, list):
            text = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_catalog(text, source="my-kpis.toml")
    return str(info.value)


def test_bundled_catalog_ships_the_documented_kpis() -> None:
    cat = load_catalog(None)
    by_name = {k.name: k for k in cat.kpis}
    assert list(by_name) == [
        "orders",
        "revenue",
        "conversion",
        "cart_value",
        "latency_p95",
        "error_rate",
    ]
    assert {n for n, k in by_name.items() if k.critical} == {
        "orders",
        "revenue",
        "conversion",
        "error_rate",
    }
    conv = by_name["conversion"]
    assert (conv.aggregation, conv.numerator, conv.denominator) == ("ratio", "orders", "sessions")
    p95 = by_name["latency_p95"]
    assert (p95.aggregation, p95.stream, p95.quantile, p95.direction) == (
        "quantile",
        "latency_ms",
        0.95,
        "down",
    )
    assert by_name["error_rate"].direction == "down"
    assert by_name["cart_value"].aggregation == "mean"
    for k in cat.kpis:
        assert (k.baseline_seconds, k.post_seconds, k.bucket_seconds) == (14400.0, 600.0, 60.0)
        assert (k.max_horizon_seconds, k.overlap_seconds) == (14400.0, 3600.0)
        assert k.min_change == pytest.approx(0.02)
        assert k.seasonality == "auto"
    assert cat.scope_labels == ("region", "version")


def test_defaults_apply_to_every_kpi_and_a_kpi_overrides_them() -> None:
    text = """
[defaults]
baseline = "2h"
post = "30m"
bucket = "5m"
min_change = "5%"
seasonality = "daily"
allowed_lateness = 90
min_buckets = 3

[[kpi]]
name = "orders"
aggregation = "sum"

[[kpi]]
name = "latency"
aggregation = "quantile"
stream = "latency_ms"
quantile = 0.99
direction = "down"
min_change = 0.1
services = ["checkout"]
"""
    cat = parse_catalog(text)
    orders, latency = cat.kpis
    assert orders.stream == "orders"  # a sum KPI reads the stream of its own name by default
    assert (orders.baseline_seconds, orders.post_seconds, orders.bucket_seconds) == (
        7200.0,
        1800.0,
        300.0,
    )
    assert orders.min_change == pytest.approx(0.05)
    assert orders.seasonality == "daily"
    assert orders.allowed_lateness_seconds == 90.0
    assert latency.min_change == pytest.approx(0.1)
    assert latency.services == ("checkout",)
    assert cat.for_service("checkout") == (orders, latency)
    assert cat.for_service("search") == (orders,)
    assert cat.by_stream("latency_ms") == (latency,)
    assert cat.by_stream("nope") == ()
    assert cat.streams() == frozenset({"orders", "latency_ms"})


def test_ratio_kpi_reads_both_streams() -> None:
    cat = parse_catalog(
        kpi_block(
            name="conversion", aggregation="ratio", numerator="orders", denominator="sessions"
        )
        + kpi_block(name="orders", aggregation="sum")
    )
    conv, orders = cat.kpis
    assert cat.by_stream("orders") == (conv, orders)
    assert cat.by_stream("sessions") == (conv,)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("60m", 3600.0), ("2h", 7200.0), ("1d", 86400.0), ("1w", 604800.0), (45, 45.0)],
)
def test_durations_accept_units_and_plain_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_fractions_accept_percent_strings_and_numbers() -> None:
    assert parse_fraction("2%") == pytest.approx(0.02)
    assert parse_fraction("0.5 %") == pytest.approx(0.005)
    assert parse_fraction(0.03) == 0.03
    with pytest.raises(ValueError):
        parse_fraction("two percent")


def test_retention_covers_windows_season_and_lateness() -> None:
    base = 'baseline = "1h"\npost = "10m"\nmax_horizon = "30m"\nallowed_lateness = "5m"\n'
    weekly = parse_catalog(MINIMAL + base + 'seasonality = "auto"\n')
    daily = parse_catalog(MINIMAL + base + 'seasonality = "daily"\n')
    none = parse_catalog(MINIMAL + base + 'seasonality = "none"\n')
    windows = 3600 + 1800 + 300 + 60  # windows, lateness and one bucket of alignment slack
    assert weekly.retention_seconds() == windows + WEEK_SECONDS
    assert daily.retention_seconds() == windows + DAY_SECONDS
    assert none.retention_seconds() == windows
    assert none.allowed_lateness_seconds("any") == 300.0


def test_unknown_key_names_file_kpi_and_field_with_a_hint() -> None:
    msg = config_error(MINIMAL + 'min_chnage = "2%"\n')
    assert "my-kpis.toml" in msg
    assert "kpi 'orders'" in msg
    assert "unknown key 'min_chnage'" in msg
    assert "did you mean 'min_change'" in msg


def test_unknown_keys_in_defaults_and_top_level_are_errors() -> None:
    msg = config_error("[defaults]\nwindow = 3\n[extra]\nx = 1\n" + MINIMAL)
    assert "[defaults]: unknown key 'window'" in msg
    assert "top level: unknown key 'extra'" in msg


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            kpi_block(name="conversion", aggregation="ratio", denominator="sessions"),
            "kpi 'conversion': a ratio KPI needs both 'numerator' and 'denominator'",
        ),
        (
            kpi_block(name="orders", aggregation="sum", baseline="61m", bucket="2m"),
            "kpi 'orders': field 'baseline': must be a positive multiple of the bucket",
        ),
        (
            kpi_block(name="orders", aggregation="sum", bucket="0s"),
            "kpi 'orders': field 'bucket': must be > 0",
        ),
        (
            kpi_block(name="orders", aggregation="sum", min_change="150%"),
            "kpi 'orders': field 'min_change': must be within (0, 1)",
        ),
        (
            kpi_block(name="orders", aggregation="sum", min_change=0),
            "kpi 'orders': field 'min_change': must be within (0, 1)",
        ),
        (
            kpi_block(name="p95", aggregation="quantile", stream="latency_ms"),
            "kpi 'p95': field 'quantile': a quantile KPI needs 0 < quantile < 1",
        ),
        (
            kpi_block(name="orders", aggregation="median"),
            "kpi 'orders': field 'aggregation': must be one of sum, mean, ratio, quantile",
        ),
        (
            kpi_block(name="orders", aggregation="sum", direction="sideways"),
            "kpi 'orders': field 'direction': must be one of up, down, either",
        ),
        (
            kpi_block(name="orders", aggregation="sum", critical="yes"),
            "kpi 'orders': field 'critical': must be true or false",
        ),
        (
            kpi_block(name="orders", aggregation="sum", min_buckets=61),
            "kpi 'orders': field 'min_buckets': 61 is more than a window holds",
        ),
        (kpi_block(name="orders"), "kpi 'orders': field 'aggregation': missing"),
        (
            kpi_block(name="orders", aggregation="sum", post="soon"),
            "kpi 'orders': field 'post': expected a duration",
        ),
    ],
)
def test_invalid_kpi_fields_are_reported_by_kpi_and_field(block: str, expected: str) -> None:
    assert expected in config_error(block)


def test_duplicate_kpi_names_are_an_error() -> None:
    msg = config_error(MINIMAL + MINIMAL)
    assert "kpi 'orders': duplicate KPI name" in msg


def test_kpis_sharing_a_stream_must_share_the_bucket_width() -> None:
    msg = config_error(
        kpi_block(name="orders", aggregation="sum", bucket="1m")
        + kpi_block(
            name="conversion",
            aggregation="ratio",
            numerator="orders",
            denominator="sessions",
            bucket="5m",
            post="1h",
            max_horizon="1h",
        )
    )
    assert "kpi 'conversion': field 'bucket': stream 'orders' already uses 60s buckets" in msg


def test_every_problem_is_reported_at_once() -> None:
    msg = config_error(
        kpi_block(name="a", aggregation="sum", bucket="-1m")
        + kpi_block(name="b", aggregation="ratio", numerator="x")
    )
    assert "kpi 'a'" in msg and "kpi 'b'" in msg


def test_not_toml_and_empty_catalog_are_errors() -> None:
    assert "my-kpis.toml: not valid TOML" in config_error("[[kpi]\n")
    assert "defines no KPI" in config_error("")


def test_load_catalog_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "kpis.toml"
    good.write_text(MINIMAL)
    assert load_catalog(good).kpis[0].name == "orders"
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "bucket = 0\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_catalog(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(tmp_path / "missing.toml")


def test_scope_settings_are_validated() -> None:
    cat = parse_catalog('[scope]\nlabels = ["region"]\nmax_values = 4\n' + MINIMAL)
    assert (cat.scope_labels, cat.max_label_values) == (("region",), 4)
    assert "field 'max_values'" in config_error("[scope]\nmax_values = 0\n" + MINIMAL)
