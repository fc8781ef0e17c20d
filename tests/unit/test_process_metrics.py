"""The worker's injected registry carries the standard process and platform series."""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from stream_app.metrics import Metrics, add_process_collectors


def test_process_and_platform_series_are_on_the_injected_registry() -> None:
    m = Metrics(CollectorRegistry())
    assert m.registry.get_sample_value("process_resident_memory_bytes") is None
    add_process_collectors(m.registry)
    rss = m.registry.get_sample_value("process_resident_memory_bytes")
    assert rss is not None and rss > 1_000_000  # a Python process holds more than a megabyte
    assert m.registry.get_sample_value("process_cpu_seconds_total") is not None
    v = sys.version_info
    labels = {
        "implementation": sys.implementation.name.capitalize().replace("Cpython", "CPython"),
        "major": str(v.major),
        "minor": str(v.minor),
        "patchlevel": str(v.micro),
        "version": f"{v.major}.{v.minor}.{v.micro}",
    }
    assert m.registry.get_sample_value("python_info", labels) == 1.0


def test_adding_them_twice_exports_each_series_once() -> None:
    m = Metrics(CollectorRegistry())
    add_process_collectors(m.registry)
    add_process_collectors(m.registry)
    lines = m.render().decode().splitlines()
    assert sum(1 for line in lines if line.startswith("process_resident_memory_bytes ")) == 1
    assert sum(1 for line in lines if line.startswith("python_info{")) == 1
