"""Impact contract: one verdict for (release, KPI), flattened from `VerdictRecord`.

Times are RFC 3339 UTC strings; numbers that are not finite (or unknown) are null.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stream_app.core.types import VerdictRecord
from stream_app.events import Timestamp, finite, format_timestamp

IMPACT_SCHEMA_VERSION = 1


class ImpactEvent(BaseModel):
    """A release-impact verdict for one KPI (interim or final, revised as data arrives)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="ImpactVerdict")

    v: Literal[1] = Field(default=1, description="Schema version.")
    release_id: str = Field(description="context.id of the release event.")
    service: str
    product: str | None = Field(
        default=None,
        description="The product (value stream) of the service; for a product-level KPI the "
        "release was judged on the product's samples.",
    )
    version: str
    release_time: Timestamp
    kpi: str
    critical: bool
    phase: Literal["interim", "final"]
    revision: int = Field(
        ge=1, description="1 for the first event of (release, KPI, phase), +1 per revision."
    )
    baseline_start: Timestamp
    baseline_end: Timestamp
    post_start: Timestamp
    post_end: Timestamp
    baseline_value: float | None = None
    post_value: float | None = None
    change: float | None = Field(default=None, description="Relative change post vs baseline.")
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = Field(default=None, description="After false-discovery control.")
    rank_p_value: float | None = Field(default=None, description="Mann-Whitney U on bucket values.")
    hl_change: float | None = Field(default=None, description="Hodges-Lehmann shift, relative.")
    hl_ci_low: float | None = None
    hl_ci_high: float | None = None
    verdict: Literal["improved", "degraded", "neutral", "inconclusive", "confounded"]
    reason_code: str
    reason: str
    method: str
    more_buckets_needed: int | None = None
    confounders: list[str] = Field(default_factory=list, description="Ids of overlapping releases.")
    seasonal_reference: str | None = None
    reference: str | None = Field(
        default=None, description='The counterfactual\'s references, e.g. "weekly+daily x3".'
    )
    coverage: float | None = Field(
        default=None, description="Share of the post window's buckets holding data."
    )
    detectable_low: float | None = Field(
        default=None,
        description="Inconclusive at the horizon: the data rules out changes below this.",
    )
    detectable_high: float | None = Field(
        default=None,
        description="Inconclusive at the horizon: the data rules out changes above this.",
    )
    extra: dict[str, str] = Field(default_factory=dict)


def impact_event(rec: VerdictRecord) -> ImpactEvent:
    """Flatten a verdict record into the impact contract.

    Numbers are converted to plain Python types first: the core may hand numpy scalars.
    """
    j = rec.judgement
    return ImpactEvent(
        release_id=rec.release_id,
        service=rec.service,
        product=rec.product or None,
        version=rec.version,
        release_time=format_timestamp(rec.release_time),
        kpi=rec.kpi,
        critical=bool(rec.critical),
        phase=rec.phase,
        revision=int(rec.revision),
        baseline_start=format_timestamp(rec.baseline_window[0]),
        baseline_end=format_timestamp(rec.baseline_window[1]),
        post_start=format_timestamp(rec.post_window[0]),
        post_end=format_timestamp(rec.post_window[1]),
        baseline_value=finite(j.baseline_value),
        post_value=finite(j.post_value),
        change=finite(j.change),
        ci_low=finite(j.ci_low),
        ci_high=finite(j.ci_high),
        p_value=finite(j.p_value),
        p_adjusted=finite(j.p_adjusted),
        rank_p_value=finite(j.rank_p_value),
        hl_change=finite(j.hl_change),
        hl_ci_low=finite(j.hl_ci_low),
        hl_ci_high=finite(j.hl_ci_high),
        verdict=j.verdict,
        reason_code=j.reason_code,
        reason=j.reason,
        method=j.method,
        more_buckets_needed=None if j.more_buckets_needed is None else int(j.more_buckets_needed),
        confounders=list(j.confounders),
        seasonal_reference=rec.seasonal_reference,
        reference=j.reference,
        coverage=finite(j.coverage),
        detectable_low=finite(j.detectable_low),
        detectable_high=finite(j.detectable_high),
        extra=dict(rec.extra),
    )
