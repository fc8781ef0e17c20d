"""The demo scenario over many seeds: how often a KPI nothing changed is called, how often neutral.

    python -m bench.demo_verdicts [--seeds 20] [--jobs 2]

Each seed's demo shop (`valueloop simulate --scenario demo`) goes through one Pipeline as
`valueloop replay` runs it; final verdicts are paired with the simulator's truth. Prints, over
every (release, KPI) whose true effect is 0 and that overlaps no other release: the share called
`degraded`/`improved` (per KPI, quantile KPIs included) and, for the releases labelled neutral,
the share of their KPIs called `neutral`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from stream_app.core.catalog import load_catalog
from stream_app.sim.accuracy import judge_events
from stream_app.simulate import demo_scenario, generate, ground_truth


def one(seed: int) -> list[tuple[str, str, str]]:
    """(kpi, release label, final verdict) of every untouched, non-overlapping pair of a seed."""
    sc = demo_scenario(seed)
    finals = {}
    for rec in judge_events(list(generate(sc)), load_catalog()):
        if rec.phase == "final":
            finals[(rec.release_id, rec.kpi)] = rec.judgement.verdict
    return [
        (t.kpi, t.label, finals.get((t.release_id, t.kpi), "missing"))
        for t in ground_truth(sc)
        if t.effect == 0.0 and not t.overlaps
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [r for part in pool.map(one, range(1, args.seeds + 1)) for r in part]
    by_kpi: dict[str, Counter[str]] = {}
    for kpi, _, verdict in rows:
        by_kpi.setdefault(kpi, Counter())[verdict] += 1
    called = sum(1 for _, _, v in rows if v in ("degraded", "improved"))
    print(f"demo scenario, seeds 1-{args.seeds}: {len(rows)} KPI verdicts with true effect 0")
    print(f"called degraded/improved: {called}/{len(rows)} = {called / len(rows):.2%}")
    for kpi, c in sorted(by_kpi.items()):
        n = sum(c.values())
        print(f"  {kpi:12s} n={n:4d} " + " ".join(f"{v}={k}" for v, k in sorted(c.items())))
    neutral = [v for _, label, v in rows if label == "neutral"]
    said = sum(1 for v in neutral if v == "neutral")
    print(
        f"neutral releases' KPIs called neutral: {said}/{len(neutral)} = {said / len(neutral):.2%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
