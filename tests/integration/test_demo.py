"""The README's first command: `valueloop demo` runs the whole stack and ends with the summary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(
    shutil.which("prometheus") is None and not os.environ.get("CI"), reason="no prometheus"
)
def test_demo_runs_and_ends_with_the_summary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALUELOOP_")}
    env["VALUELOOP_DATA_DIR"] = str(tmp_path / "data")
    env["VALUELOOP_METRICS_PORT"] = "0"  # any free port: CI may run beside another worker
    out = subprocess.run(
        [sys.executable, "-m", "stream_app", "demo", "--timeout", "600"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for expected in (
        "Release verdicts (final)",
        "degraded",
        "Bottleneck",
        "waiting-for-qa",
        "DORA",
        "Paged during the demo",
        "ReleaseDegradedCriticalKPI",
        "service=checkout",
        "Prometheus: http://127.0.0.1:",
        "/ui/vsm",
    ):
        assert expected in text, f"{expected!r} missing from the demo summary:\n{text[-4000:]}"
    # Its Kafka clients stop before the broker: no librdkafka reconnect line at the end.
    assert "Connection refused" not in out.stdout + out.stderr, out.stderr[-3000:]
    # It cleans up after itself: its data directory and processes are gone.
    assert not list((tmp_path / "data").glob("demo-*"))
