"""Value types shared by the pure core: KPI specs, window data, judgements and verdict records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Aggregation = Literal["sum", "mean", "ratio", "quantile"]
Direction = Literal["up", "down", "either"]
Seasonality = Literal["auto", "weekly", "daily", "none"]
# Who a KPI is measured for: each service on its own, or the product (value stream) it serves.
Level = Literal["service", "product"]
Verdict = Literal["improved", "degraded", "neutral", "inconclusive", "confounded"]
VERDICTS: tuple[Verdict, ...] = ("improved", "degraded", "neutral", "inconclusive", "confounded")
Phase = Literal["interim", "final"]


@dataclass(frozen=True, slots=True)
class KpiSpec:
    """One KPI of the catalog: what value means for a service.

    A KPI reads one or two sample streams (``KpiSample.kpi`` names). ``sum`` and ``mean`` and
    ``quantile`` read ``stream``; ``ratio`` reads ``numerator`` / ``denominator`` (e.g. conversion =
    orders / sessions) and is always computed as a ratio of sums, never an average of ratios.
    """

    name: str
    aggregation: Aggregation
    stream: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    quantile: float | None = None  # e.g. 0.95 for p95 latency
    direction: Direction = "up"  # the good direction
    min_change: float = 0.02  # smallest relative change that matters (0.02 = 2 %)
    baseline_seconds: float = 14400.0  # longest baseline; it stops at the previous release
    post_seconds: float = 600.0  # minimum post window: the first look
    max_horizon_seconds: float = 14400.0  # longest post window: the last look
    overlap_seconds: float = 3600.0  # releases of a service closer than this confound each other
    bucket_seconds: float = 60.0
    min_buckets: int = 10  # per window, buckets that hold data
    min_samples: int = 30  # per window, raw observations (sum of counts)
    critical: bool = False
    seasonality: Seasonality = (
        "auto"  # auto: week-ago history when present, else day-ago, else none
    )
    allowed_lateness_seconds: float = 300.0
    services: tuple[str, ...] = ()  # empty: every service (product level: every product)
    level: Level = "service"  # product: judged for every release of the product's services

    def streams(self) -> tuple[str, ...]:
        """The sample streams this KPI reads."""
        if self.aggregation == "ratio":
            assert self.numerator is not None and self.denominator is not None
            return (self.numerator, self.denominator)
        assert self.stream is not None
        return (self.stream,)


@dataclass(frozen=True, slots=True)
class WindowData:
    """Per-bucket data of one KPI over one window, in bucket order, every expected bucket present.

    For every aggregation the window's value is ``sum(num) / sum(den)`` and bucket i's value is
    ``num[i] / den[i]``:
      - sum: num = bucket sum, den = 1 when the service reported any sample in the bucket, 0
        when it reported nothing (an outage is missing data, not a zero);
      - mean: num = sum of values, den = number of observations (0 when empty);
      - ratio: num = numerator stream's sum, den = denominator stream's sum;
      - quantile: num = the bucket's quantile, den = 1 (0 when the bucket is empty).
    ``samples`` is the number of raw observations behind the window (sum of counts).
    """

    start: float
    end: float
    num: tuple[float, ...]
    den: tuple[float, ...]
    samples: float
    counts: tuple[float, ...] = ()  # observations per bucket (quantile KPIs: their noise)

    @property
    def value(self) -> float | None:
        """The window's KPI value, or None when it has no data."""
        d = sum(self.den)
        return sum(self.num) / d if d > 0 else None


@dataclass(frozen=True, slots=True)
class KpiJudgement:
    """The judge's answer for one KPI of one release."""

    kpi: str
    verdict: Verdict
    reason: str  # human explanation; bounded reason code is in `reason_code`
    reason_code: (
        str  # e.g. "significant", "within-threshold", "thin-data", "empty-baseline", "overlap"
    )
    baseline_value: float | None = None
    post_value: float | None = None
    change: float | None = None  # relative change post vs baseline (after seasonal correction)
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None  # after false-discovery control across the release's KPIs
    rank_p_value: float | None = None  # Mann-Whitney U on bucket values
    hl_change: float | None = None  # Hodges-Lehmann shift, relative to the baseline median
    hl_ci_low: float | None = None
    hl_ci_high: float | None = None
    method: str = ""  # e.g. "delta-log-ratio+seasonal(weekly)"
    more_buckets_needed: int | None = None  # for inconclusive: how much more data would tell
    confounders: tuple[str, ...] = ()  # ids of overlapping releases
    coverage: float | None = None  # share of the post window's buckets that hold data
    reference: str | None = None  # the counterfactual's reference ("weekly+3 daily", ...)
    detectable_low: float | None = None  # inconclusive at the horizon: the data rules out
    detectable_high: float | None = None  # changes beyond these (the last look's interval)


@dataclass(frozen=True, slots=True)
class VerdictRecord:
    """One verdict event for (release, KPI): what goes to the impact topic and to Prometheus."""

    release_id: str
    service: str
    version: str
    release_time: float
    kpi: str
    critical: bool
    phase: Phase
    revision: int  # 1 for the first event of (release, KPI, phase); +1 for each revision
    baseline_window: tuple[float, float]
    post_window: tuple[float, float]
    judgement: KpiJudgement
    seasonal_reference: str | None = None  # "weekly", "daily" or None
    extra: dict[str, str] = field(default_factory=dict)
    # The product (value stream) the service belongs to; for a product-level KPI the release was
    # judged on the product's samples ("" in records stored before products existed).
    product: str = ""
