"""Products (value streams) own product-level KPIs: catalog levels, sample routing, contracts."""

from __future__ import annotations

import orjson
import pytest

from stream_app.core.catalog import parse_catalog, product_key, product_name
from stream_app.errors import ConfigError, DecodeError
from stream_app.events.model import KpiSample
from stream_app.events.telemetry import TelemetrySample, sample_from_obj, sample_to_obj

SHOP = """
[defaults]
seasonality = "none"

[[kpi]]
name = "conversion"
aggregation = "ratio"
numerator = "orders"
denominator = "sessions"
level = "product"

[[kpi]]
name = "latency_p95"
aggregation = "quantile"
stream = "latency_ms"
quantile = 0.95
direction = "down"
"""


def test_a_kpi_is_declared_at_product_or_service_level() -> None:
    cat = parse_catalog(SHOP)
    assert [(k.name, k.level) for k in cat.kpis] == [
        ("conversion", "product"),
        ("latency_p95", "service"),
    ]
    assert [k.name for k in cat.for_service("search")] == ["latency_p95"]
    assert [k.name for k in cat.for_service(product_key("shop"))] == ["conversion"]
    assert product_name(product_key("shop")) == "shop" and product_name("search") is None


def test_a_stream_is_read_at_one_level_only() -> None:
    text = SHOP + '\n[[kpi]]\nname = "orders"\naggregation = "sum"\n'
    with pytest.raises(ConfigError, match="stream 'orders' is read at product level"):
        parse_catalog(text)
    with pytest.raises(ConfigError, match="level"):
        parse_catalog(SHOP.replace('level = "product"', 'level = "team"'))


def test_samples_go_to_their_product_or_their_service() -> None:
    cat = parse_catalog(SHOP).with_products({"shop": ["search", "cart", "checkout"]})
    assert cat.product_of("cart") == "shop" and cat.product_of("billing") == "billing"
    # A product-level stream: the sample's own product, else its service's product.
    assert cat.subject_of(KpiSample("web", "orders", 0.0, 1.0, product="shop")) == "product:shop"
    assert cat.subject_of(KpiSample("checkout", "sessions", 0.0, 1.0)) == "product:shop"
    # A service not in any value stream is its own product (old samples keep working).
    assert cat.subject_of(KpiSample("billing", "orders", 0.0, 1.0)) == "product:billing"
    # Service-level streams stay with their service, whatever the sample says.
    assert cat.subject_of(KpiSample("cart", "latency_ms", 0.0, 1.0, product="shop")) == "cart"


def test_a_sample_may_name_its_product_and_leave_out_its_service() -> None:
    obj = orjson.loads(b'{"product": "shop", "kpi": "orders", "time": 10, "value": 2}')
    s = sample_from_obj(obj)
    assert (s.service, s.product) == ("shop", "shop")
    assert TelemetrySample.model_validate(obj).to_sample() == s
    both = {"service": "web", "product": "shop", "kpi": "orders", "time": 10.0, "value": 2.0}
    assert sample_from_obj(both).product == "shop"
    assert sample_to_obj(sample_from_obj(both)) == both
    # An old sample (no product) decodes as before.
    old = {"service": "web", "kpi": "orders", "time": 10.0, "value": 2.0}
    assert sample_from_obj(old) == KpiSample("web", "orders", 10.0, 2.0)
    with pytest.raises(DecodeError):
        sample_from_obj({"kpi": "orders", "time": 10, "value": 2})
    with pytest.raises(ValueError):
        TelemetrySample.model_validate({"kpi": "orders", "time": 10, "value": 2})
    with pytest.raises(DecodeError):
        sample_from_obj({"product": "", "kpi": "orders", "time": 10, "value": 2})
