"""``python -m bench.accuracy``: the judge graded by an oracle on two independent simulated worlds.

Each (world, seed) is generated, replayed through one Pipeline exactly as ``valueloop replay``
runs it (stream_app.sim.accuracy.judge_events) and scored against oracle truth
(stream_app.sim.truth); seeds run in parallel processes. Prints one table per world (per KPI and
overall, with counts) and writes the figures as JSON with ``--out``.

    python -m bench.accuracy                         # both worlds, default seeds, 2 processes
    python -m bench.accuracy --world shop --seeds 1 --jobs 1
    python -m bench.accuracy --world product         # the shop's KPIs at product level
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stream_app.settings import Settings
from stream_app.sim import shopworld, simworld
from stream_app.sim.accuracy import (
    TARGETS,
    Figures,
    Scored,
    bench_catalog,
    figures_by_kpi,
    judge_events,
    product_catalog,
    score,
)

SHOP_SEEDS = shopworld.SEEDS  # 3 x 21 days: ~940 releases
SIM_SEEDS = (11, 12, 13, 14)  # 4 x 200 releases (test_accuracy's seeds)
SHOP_DAYS = shopworld.DAYS
SIM_RELEASES = 200
PRODUCT_SEEDS = (1, 2, 3)  # 3 x 14 days, search/cart/checkout of one shop: ~290 releases
PRODUCT_DAYS = 14


def run_one(
    world: str, seed: int, shop_days: int, sim_releases: int
) -> tuple[list[Scored], dict[str, float]]:
    """Generate, replay and score one (world, seed); returns the pairs and timings (seconds)."""
    t0 = time.perf_counter()
    catalog = bench_catalog()
    if world == "product":
        planned = shopworld.plan_product_world(seed, PRODUCT_DAYS)
        events: Sequence[Any] = shopworld.generate(planned)
        truths = shopworld.truth(planned)
        catalog = product_catalog("shop", [s.name for s in planned.services])
    elif world == "shop":
        planned = shopworld.plan_world(seed, shop_days)
        events = shopworld.generate(planned)
        truths = shopworld.truth(planned)
    else:
        scenario = simworld.sim_scenario(seed, sim_releases)
        events = simworld.sim_events(scenario)
        truths = simworld.sim_truth(scenario)
    t1 = time.perf_counter()
    records = judge_events(events, catalog, Settings().guard_limits())
    t2 = time.perf_counter()
    pairs = score(truths, records)
    timing = {"generate_s": t1 - t0, "replay_s": t2 - t1, "events": float(len(events))}
    return pairs, timing


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def render(world: str, figs: dict[str, Figures]) -> str:
    """One text table: rows are the figures, columns the KPIs and "all"; cells share (hits/n)."""
    cols = list(figs)
    names = list(next(iter(figs.values())).rates)
    width = 17
    lines = [
        f"== world {world}",
        f"{'figure':34}{'target':>18}" + "".join(f"{c:>{width}}" for c in cols),
    ]
    for name in names:
        cells = []
        for c in cols:
            r = figs[c].rates[name]
            cells.append(f"{_pct(r.share)} {r.hits}/{r.n}" if r.n else "-")
        lines.append(
            f"{name:34}{TARGETS.get(name, ''):>18}" + "".join(f"{x:>{width}}" for x in cells)
        )
    cells = []
    for c in cols:
        d = figs[c].first_degraded
        cells.append(f"{d.median_min:.0f}/{d.p90_min:.0f}m n{d.n}" if d.n else "-")
    lines.append(
        f"{'first degraded median/p90':34}{TARGETS['first_degraded']:>18}"
        + "".join(f"{x:>{width}}" for x in cells)
    )
    lines.append(f"{'pairs':34}{'':>18}" + "".join(f"{figs[c].pairs:>{width}}" for c in cols))
    gap = figs["all"].gap_verdicts
    lines.append(f"verdicts of pairs with a gap in A (all KPIs): {gap}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite and print the tables."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.accuracy", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--world", choices=("shop", "sim", "product", "both"), default="both")
    ap.add_argument("--seeds", type=int, nargs="*", help="seeds (default: per world)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--shop-days", type=int, default=SHOP_DAYS)
    ap.add_argument("--sim-releases", type=int, default=SIM_RELEASES)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    worlds = ("shop", "sim") if args.world == "both" else (args.world,)
    tasks = [
        (w, s)
        for w in worlds
        for s in (args.seeds or {"shop": SHOP_SEEDS, "product": PRODUCT_SEEDS}.get(w, SIM_SEEDS))
    ]
    started = time.perf_counter()
    results: dict[tuple[str, int], tuple[list[Scored], dict[str, float]]] = {}
    if args.jobs <= 1:
        for w, s in tasks:
            results[(w, s)] = run_one(w, s, args.shop_days, args.sim_releases)
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futs = {
                (w, s): pool.submit(run_one, w, s, args.shop_days, args.sim_releases)
                for w, s in tasks
            }
            for key, fut in futs.items():
                results[key] = fut.result()
    out: dict[str, Any] = {"runs": [], "worlds": {}}
    for (w, s), (_, timing) in results.items():
        print(
            f"{w} seed {s}: {timing['events']:,.0f} events, generate {timing['generate_s']:.1f} s,"
            f" replay {timing['replay_s']:.1f} s"
        )
        out["runs"].append({"world": w, "seed": s, **timing})
    for w in worlds:
        pairs = [p for (ww, _), (ps, _) in results.items() if ww == w for p in ps]
        figs = figures_by_kpi(pairs)
        releases = len({(p.truth.seed, p.truth.release_id) for p in pairs})
        print()
        print(render(w, figs))
        print(f"releases: {releases}")
        out["worlds"][w] = {
            "releases": releases,
            "figures": {k: _as_json(f) for k, f in figs.items()},
        }
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.1f} s with {args.jobs} process(es)")
    out["wall_s"] = wall
    if args.out is not None:
        args.out.write_text(json.dumps(_finite(out), indent=2) + "\n")
    return 0


def _as_json(f: Figures) -> dict[str, Any]:
    """The figures as plain data, each rate with its share."""
    d = asdict(f)
    for name, r in f.rates.items():
        d["rates"][name]["share"] = r.share
    return d


def _finite(x: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


if __name__ == "__main__":
    raise SystemExit(main())
