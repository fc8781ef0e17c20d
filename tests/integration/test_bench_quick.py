"""The benchmark harness runs end to end in its CI size and reports every figure (no timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import rows

REPO = Path(__file__).resolve().parents[2]
FIGURES = ("memory", "replay", "floor", "pipeline", "latency", "scale")


@pytest.mark.timeout(600)
def test_quick_bench_writes_every_figure(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "VALUELOOP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    res = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=540,
        check=False,
    )
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-4000:]

    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "quick"
    assert results["errors"] == {}, results["errors"]
    assert set(FIGURES) <= set(results["figures"])
    machine = results["machine"]
    for key in ("cores", "cpu_model", "ram_gib", "python", "kafka_broker", "date", "git_commit"):
        assert machine[key] not in (None, ""), key
    f = results["figures"]
    assert f["floor"]["confluent"]["events"] >= results["size"]["events"]
    assert f["floor"]["aiokafka"]["events"] >= results["size"]["events"]
    assert f["pipeline"]["samples_accepted"] == results["size"]["events"]
    assert len(f["latency"]["all_s"]) == results["size"]["latency_releases"]
    assert f["memory"]["tracemalloc"]["buckets"] > 0
    assert f["scale"]["2w"]["workers"] == 2
    # Every figure of the table has a value, and the Markdown shows each one.
    table = rows(results)
    missing = [r["figure"] for r in table if r["value"] is None and "one by one" not in r["figure"]]
    assert not missing, missing
    md = (out / "RESULTS.md").read_text()
    for r in table:
        assert r["figure"] in md
    assert "## Machine" in md and "## Targets" in md
    # CI results go to --out, never over the committed bench/RESULTS.md.
    assert not (REPO / "bench" / "results.json").exists() or (
        (REPO / "bench" / "results.json").read_text() != (out / "results.json").read_text()
    )
