"""``python -m bench.product_scale``: one product's KPI state with many member services releasing.

A product's KPI state is on one partition, so one worker core judges every release of every member
service on the product's KPIs and takes all of the product's samples. This feeds one `Pipeline`
(the worker's and replay's core, in process) with a product of ``--services`` member services,
each releasing every 6 hours (offsets spread), and the product's sessions, orders, revenue and
cart value as ``--per-minute`` samples per stream and minute (pre-aggregated producers), for
``--days`` days, as fast as the core takes them; the same samples without releases are the
baseline. Prints samples/s of both and the releases judged.

    python -m bench.product_scale --services 50 --days 3 --per-minute 20
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from stream_app.codec import Decoded
from stream_app.events.model import KpiSample, Release
from stream_app.pipeline import Pipeline
from stream_app.replay import ReplayOutcome, replay
from stream_app.sim.accuracy import product_catalog

START = 1717632000.0  # Thursday 00:00 UTC
RELEASE_EVERY = 6 * 3600.0


def events(services: int, days: int, per_minute: int, releases: bool) -> list[Decoded]:
    """The product's samples (and its member services' releases), in event-time order."""
    rng = random.Random(5)
    out: list[Decoded] = []
    names = [f"svc{i:03d}" for i in range(services)]
    if releases:
        for i, name in enumerate(names):
            t = START + 86400.0 + RELEASE_EVERY * i / services
            n = 0
            while t < START + days * 86400.0:
                out.append(Release(f"{name}-{n}", name, f"1.{n}", t, "deployed"))
                t += RELEASE_EVERY
                n += 1
    for m in range(days * 1440):
        t = START + 60.0 * m
        for k in range(per_minute):
            s = 40 + rng.randint(-4, 4)
            o = sum(1 for _ in range(s) if rng.random() < 0.05)
            src = f"web-{k}"
            out.append(KpiSample(src, "sessions", t, s, s, product="shop"))
            out.append(KpiSample(src, "orders", t, o, o, product="shop"))
            out.append(KpiSample(src, "revenue", t, 50.0 * o, o, product="shop"))
            if o:
                out.append(KpiSample(src, "cart_value", t, 50.0 * o, o, product="shop"))
    out.sort(key=lambda e: e.time)
    return out


def run(services: int, days: int, per_minute: int, releases: bool) -> tuple[float, int, int]:
    """(seconds, samples, final verdicts) of one run."""
    evs = events(services, days, per_minute, releases)
    catalog = product_catalog("shop", [f"svc{i:03d}" for i in range(services)])
    pipeline = Pipeline(catalog)
    t0 = time.perf_counter()
    verdicts = replay(evs, pipeline, ReplayOutcome()).verdicts
    dt = time.perf_counter() - t0
    samples = sum(1 for e in evs if isinstance(e, KpiSample))
    return dt, samples, sum(1 for v in verdicts if v.phase == "final")


def main(argv: Sequence[str] | None = None) -> int:
    """Run with and without releases and print the rates."""
    ap = argparse.ArgumentParser(prog="python -m bench.product_scale")
    ap.add_argument("--services", type=int, default=50)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--per-minute", type=int, default=20)
    args = ap.parse_args(argv)
    base, n, _ = run(args.services, args.days, args.per_minute, releases=False)
    dt, n2, finals = run(args.services, args.days, args.per_minute, releases=True)
    rel = args.services * (args.days - 1) * 86400.0 / RELEASE_EVERY
    print(f"product of {args.services} services, {args.days} days, {n:,} samples")
    print(f"  no releases:   {n / base:,.0f} samples/s ({base:.1f} s)")
    print(
        f"  ~{rel:.0f} releases ({rel / (args.days - 1):.0f}/day): {n2 / dt:,.0f} samples/s"
        f" ({dt:.1f} s), {finals:,} final verdicts"
    )
    # Judging costs per release, not per sample: what one partition spends on a product's releases.
    per_release = (dt - base * n2 / n) / rel
    print(f"  judging: {1000 * per_release:.0f} ms of CPU per release (all its looks, all KPIs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
