"""OTLP data points -> KPI samples: metric mapping, cumulative deltas with resets, histograms.

Pure: the per-series state of cumulative metrics is a plain dict the caller keeps (the worker
keeps it per service in a changelog-backed table, so it survives restarts and moves with the
service's partition). Its values are JSON lists ``[start_ns, time_ns, [values...]]``.

- Sum, delta temporality: one sample of the point's value. Cumulative and monotonic: the change
  since the series' previous point; a new start time or a value below the previous one is a reset
  (the counter restarted: its value counts since then). Cumulative, not monotonic (an up-down
  counter): a level, one sample of the value, like a gauge.
- Gauge: one sample of the value.
- Histogram: the change of (count, sum, buckets) as for a cumulative sum. One sample of
  ``value = sum, count = count`` (a sum KPI reads the sum, a mean KPI the mean), or, when a
  quantile KPI reads the stream and the histogram has buckets, a sample per non-empty bucket of
  ``count`` observations of the bucket's middle (the sketch takes a sample of count n as n
  observations of value / n). ``count_stream`` also receives the count.
- The first point of a cumulative series counts in full when the series started at most
  ``first_point_window`` before it (a process that just started), else it is only the baseline:
  its total since a start long ago is not a change of this minute.
- A point no newer than the previous one of its series is ``stale`` (re-delivered or reordered).

Sample ids are derived from the series and the point's time, so a point converted twice
(re-delivery after a crash) is dropped by the pipeline as a duplicate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stream_app.core.catalog import Catalog, OtlpMetric
from stream_app.events.model import KpiSample

__all__ = ["OTLP_OUTCOMES", "Conversion", "OtlpPoint", "SeriesState", "convert"]

# Outcomes of a data point (a metric label: bounded).
OTLP_OUTCOMES: tuple[str, ...] = (
    "converted",
    "first",
    "reset",
    "baseline",
    "stale",
    "unmapped",
    "unsupported",
    "no-value",
    "non-finite",
)
SeriesState = MutableMapping[str, Any]  # series id -> [start_ns, time_ns, [values]]
_NS = 1e9

PointKind = Literal["sum", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class OtlpPoint:
    """One data point of a metric, with what the conversion needs and nothing of protobuf.

    Attributes:
        metric: the metric name.
        kind: sum, gauge or histogram.
        cumulative: the point is cumulative since ``start_ns`` (else a delta or a gauge).
        monotonic: a monotonic sum (a counter); histograms count as monotonic.
        series: a stable id of the series (resource attributes, scope, metric, point attributes).
        attributes: the point's attributes as strings.
        start_ns: start of the accumulation (0: unknown).
        time_ns: time of the point, nanoseconds since the epoch.
        value: the sum's or gauge's value; a histogram's sum.
        count: a histogram's observation count (1 for the others).
        bounds: a histogram's explicit bucket bounds.
        buckets: a histogram's bucket counts (len(bounds) + 1, or empty).
    """

    metric: str
    kind: PointKind
    cumulative: bool
    monotonic: bool
    series: str
    attributes: dict[str, str]
    start_ns: int
    time_ns: int
    value: float
    count: float = 1.0
    bounds: tuple[float, ...] = ()
    buckets: tuple[float, ...] = ()


@dataclass(slots=True)
class Conversion:
    """What `convert` made of a batch of points: samples, and each point's outcome counted."""

    samples: list[KpiSample] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)


def convert(
    service: str,
    points: Iterable[OtlpPoint],
    catalog: Catalog,
    state: SeriesState,
) -> Conversion:
    """Turn the data points of one service into KPI samples.

    Args:
        service: the service (the resource's ``service.name``).
        points: its data points, in the order they arrived.
        catalog: the KPI catalog (its ``[otlp]`` mapping and which streams are quantiles).
        state: the service's cumulative series state, updated in place.

    Returns:
        The samples and the outcome of every point.
    """
    out = Conversion()
    window_ns = catalog.otlp.first_point_window * _NS
    labels_kept = catalog.otlp_labels()
    for p in points:
        target = catalog.otlp_target(p.metric)
        if target is None:
            out.outcomes["unmapped"] += 1
            continue
        values = (p.count, p.value, *p.buckets) if p.kind == "histogram" else (p.value,)
        if p.cumulative and p.monotonic:
            outcome, change = _change(state.get(p.series), p, values, window_ns)
            if outcome != "stale":
                state[p.series] = [p.start_ns, p.time_ns, list(values)]
        else:
            outcome, change = "converted", values
        out.outcomes[outcome] += 1
        if change is None:
            continue
        labels = {k: v for k, v in p.attributes.items() if k in labels_kept}
        out.samples.extend(_samples(service, p, target, change, labels, catalog))
    _forget_oldest(state, catalog.otlp.max_series)
    return out


def _change(
    prev: Any, p: OtlpPoint, values: tuple[float, ...], window_ns: float
) -> tuple[str, tuple[float, ...] | None]:
    if prev is None:
        if p.start_ns > 0 and 0 < p.time_ns - p.start_ns <= window_ns:
            return "first", values
        return "baseline", None
    p_start, p_time, p_values = prev
    if p.time_ns <= p_time:
        return "stale", None
    # A histogram's sum may fall (negative observations); its count and buckets may not.
    watched = range(len(values)) if p.kind != "histogram" else (0, *range(2, len(values)))
    restarted = bool(p.start_ns and p_start and p.start_ns != p_start)
    if restarted or len(p_values) != len(values) or any(values[i] < p_values[i] for i in watched):
        return "reset", values
    return "converted", tuple(v - pv for v, pv in zip(values, p_values, strict=True))


def _samples(
    service: str,
    p: OtlpPoint,
    target: OtlpMetric,
    change: tuple[float, ...],
    labels: dict[str, str],
    catalog: Catalog,
) -> list[KpiSample]:
    t = p.time_ns / _NS
    sid = f"otlp:{p.series}:{p.time_ns}"
    scale = target.scale
    if p.kind != "histogram":
        return [KpiSample(service, target.stream, t, change[0] * scale, 1.0, labels, sid)]
    count, total, buckets = change[0], change[1], change[2:]
    out: list[KpiSample] = []
    sketched = any(k.aggregation == "quantile" for k in catalog.by_stream(target.stream))
    if sketched and buckets and p.bounds:
        for i, n in enumerate(buckets):
            if n > 0:
                mid = _bucket_middle(p.bounds, i) * scale
                out.append(KpiSample(service, target.stream, t, mid * n, n, labels, f"{sid}:b{i}"))
    else:
        out.append(KpiSample(service, target.stream, t, total * scale, count, labels, sid))
    if target.count_stream is not None:
        out.append(KpiSample(service, target.count_stream, t, count, 1.0, labels, f"{sid}:n"))
    return out


def _bucket_middle(bounds: tuple[float, ...], i: int) -> float:
    """A value standing for bucket `i` of explicit `bounds` (``(-inf, b0], (b0, b1], ...``)."""
    if i == 0:
        return bounds[0] / 2 if bounds[0] > 0 else bounds[0]
    if i >= len(bounds):
        return bounds[-1]  # the overflow bucket has no upper bound: its lower one is all we know
    return (bounds[i - 1] + bounds[i]) / 2


def _forget_oldest(state: SeriesState, most: int) -> None:
    if len(state) <= most:
        return
    by_age = sorted(state, key=lambda s: state[s][1])
    for series in by_age[: len(state) - most]:
        del state[series]
