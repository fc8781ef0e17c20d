"""Release judge: one verdict per KPI and look, from the post window against its counterfactual.

Method, and why
---------------
Estimate. Every KPI window is a ratio of sums R = sum(num)/sum(den) over event-time buckets (sum:
den = 1 on every bucket the service reported in; mean: den = count; ratio: numerator and
denominator sums; quantile: the bucket's quantile, den = 1). A bucket without samples is missing,
never zero: a telemetry outage removes buckets, it does not read as a drop. The change is
estimated on the log scale, d = log R_post - log R_base - f, where f is the seasonal factor
log(R_post_ref / R_base_ref) of the same hours in earlier days (below), and mapped back by
exp(.) - 1.

Variance from counts. Bucket i's residual e_i = num_i - R den_i has variance phi * w_i, with a
weight that says how the KPI's noise scales: a ratio of counts (conversion = orders / sessions)
w_i = R den_i (binomial/Poisson numerator), a sum w_i = R (Poisson-like level), a mean w_i = den_i
(observations), a quantile w_i = 1 / count_i (a p95 read from few samples is noisy: Bahadur's
representation gives var ~ 1/n). The dispersion phi is estimated from every window the verdict
reads (baseline, post and references: hundreds of buckets of history) by the mean square
successive difference of the standardized residuals (von Neumann et al., Ann. Math. Stat. 1941),
which a smooth daily trend inside a window does not inflate. So a Poisson count has phi ~ 1, and
over-dispersion (per-minute conversion noise beyond Poisson) raises it; var(log R) = phi *
sum(w) / sum(num)^2 = phi / orders for conversion. For the post window the weights use the
counterfactual level when the post sum is zero, so "no orders in 20 quiet minutes" is weighed as
a Poisson count with its expected value, not as a -100 % change with certainty.

Counterfactual. The baseline is the longest stretch before the release that no earlier release
touches (up to the KPI's ``baseline``), so it adds as little noise as the post window itself. The
seasonal factor comes from the same windows one week earlier (the weekday's own shape: a Monday
surge, the Sunday->Monday step), pooled by inverse variance with every earlier day of the same
kind (the engine offers only those) whose factor agrees with it within noise; without the week-ago
windows the median day anchors the pool. A reference day's own release is never read: the engine
uses that day's baseline only after it and its post window only before it. Days of another kind
serve only as a last resort, over short windows, with their whole spread as the reference's
uncertainty. For a scoped release (region, canary version) without a seasonal reference of its
own, the rest of the traffic over the same windows is the control. The verdict names the
reference. A bucket missing on either side (an outage today or on a reference day) is left out on
both, so the shape of the day weighs the same on both sides of the difference.

Sequential looks. The release is looked at every few minutes from its minimum post window until a
verdict is decisive, the KPI's maximum horizon passes, or the next release of the service starts.
Each look's confidence interval is a repeated confidence interval (Jennison & Turnbull 1989):
its z comes from group-sequential boundaries that spend ``alpha`` over the horizon
(``stream_app.core.sequential``), so all the looks' intervals hold together with probability
1 - alpha, and stopping at any of them is honest.

Verdict (direction = the KPI's good direction; mc = min_change):
  * improved / degraded: the look's interval lies beyond +-mc/2 on one side and the estimate is at
    least mc (a minimum-effect test, Murphy & Myors 1999: a negligible change is never called).
    For direction "either" every such change is ``degraded``.
  * neutral: the look's interval lies within +-mc (equivalence); at the last look, also when the
    90 % interval does (two one-sided tests at 5 %, Schuirmann 1987).
  * inconclusive: anything else at the last look, with the interval as what the data rules out
    ("no change beyond -3.1 % / +3.4 %"), or thin data; before the last look the verdict is
    interim and the look goes on.
NaN/inf buckets count as missing and are mentioned in the reason.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import ndtr, ndtri

from stream_app.core.stats import ZERO_SE, CleanWindow, clean_window
from stream_app.core.types import KpiJudgement, KpiSpec, Verdict, WindowData

__all__ = ["CALL_MARGIN", "DEFAULT_ALPHA", "REASON_CODES", "Look", "Reference", "judge_kpi"]

# A verdict on one KPI of one release is a wrong call at most this often (two-sided), over all
# its looks: the verdict's repeated confidence intervals are at 1 - DEFAULT_ALPHA.
DEFAULT_ALPHA = 0.02
# A call needs the interval clear of changes below this share of min_change (minimum effect).
CALL_MARGIN = 0.5
# Two one-sided tests at this level grant `neutral` at the last look.
TOST_LEVEL = 0.05
# A reference whose seasonal factor differs from the anchor's by more than this many standard
# errors is broken (a step it does not share) and left out.
REFERENCE_AGREEMENT_Z = 3.0
_MAX_LOG = 50.0
# Pseudo-days of "the count model is right" that the empirical inflation is shrunk towards.
INFLATION_PRIOR = 2.0

# Bounded set of reason codes (safe as a metric label).
REASON_CODES: tuple[str, ...] = (
    "significant",  # improved/degraded: interval clear of +-min_change/2, |change| >= mc
    "within-threshold",  # neutral: interval within +-min_change
    "constant",  # neutral: zero-variance windows, change below min_change
    "constant-shift",  # improved/degraded: zero-variance windows, exact change >= min_change
    "wide-ci",  # inconclusive (last look): interval straddles 0 or the threshold
    "thin-data",  # inconclusive: too few buckets or samples
    "empty-baseline",  # inconclusive: baseline has no data or is zero
    "negative-baseline",  # inconclusive: baseline value < 0, relative change undefined
    "interim-no-call",  # inconclusive: an interim look, no decision yet
    "degenerate",  # inconclusive: values at the edge of float range, no finite estimate
    "no-reference",  # inconclusive: no earlier day of the same kind to tell the day's shape
)


@dataclass(frozen=True, slots=True)
class Reference:
    """One candidate reference: the same windows `lag_days` earlier, or the concurrent control."""

    label: str  # "weekly", "daily" or "control"
    lag_days: int  # 0 for the control
    base: WindowData
    post: WindowData
    # Variance of log(post / base) that taking the day's own releases out added (the engine's
    # stream_app.core.profile), on top of the windows' own noise.
    extra_var: float = 0.0


@dataclass(frozen=True, slots=True)
class Look:
    """Where a look stands in the release's sequence of looks."""

    boundary: float  # the z of the look's repeated confidence interval
    last: bool  # the horizon ends here: neutral by TOST or a final inconclusive are allowed
    info_fraction: float = 1.0  # elapsed / horizon, for the method string

    @staticmethod
    def fixed(alpha: float) -> Look:
        """A single look at level alpha (no sequence)."""
        return Look(float(-ndtri(alpha / 2)), True)


@dataclass(frozen=True, slots=True)
class _Win:
    """One cleaned window with its level and sums."""

    w: CleanWindow
    counts: np.ndarray
    s_num: float
    s_den: float

    @property
    def level(self) -> float:
        return self.s_num / self.s_den if self.s_den > 0 else math.nan


def _win(data: WindowData) -> _Win:
    w = clean_window(data.num, data.den)
    counts = np.asarray(data.counts, dtype=np.float64) if data.counts else w.den.copy()
    if counts.shape != w.den.shape:
        counts = w.den.copy()
    return _Win(w, counts, float(w.num.sum()), float(w.den.sum()))


def _weights(spec: KpiSpec, x: _Win, level: float) -> np.ndarray:
    """Per-bucket variance weights w_i (see "Variance from counts"); 0 where missing."""
    m = x.w.mask
    if spec.aggregation == "ratio":
        w = level * x.w.den
    elif spec.aggregation == "sum":
        w = np.full_like(x.w.den, level)
    elif spec.aggregation == "mean":
        w = x.w.den.copy()
    else:  # quantile: 1 / observations behind the bucket's quantile
        w = 1.0 / np.maximum(x.counts, 1.0)
    return np.where(m, np.maximum(w, 0.0), 0.0)


def _successive(spec: KpiSpec, x: _Win) -> tuple[float, int]:
    """Sum of squared successive differences of standardized residuals, and their count."""
    level = x.level
    if not (math.isfinite(level) and level > 0) or x.w.n < 2:
        return 0.0, 0
    w = _weights(spec, x, level)
    ok = x.w.mask & (w > 0)
    r = np.zeros_like(w)
    r[ok] = (x.w.num[ok] - level * x.w.den[ok]) / np.sqrt(w[ok])
    pair = ok[1:] & ok[:-1]
    if not pair.any():
        return 0.0, 0
    diff = r[1:][pair] - r[:-1][pair]
    return float(diff @ diff), int(pair.sum())


def _log_var(spec: KpiSpec, x: _Win, phi: float, level: float | None = None) -> float:
    """var(log R) of a window: phi * sum(w) / sum(num)^2 (weights at `level`, default R)."""
    lv = x.level if level is None else level
    if x.s_num <= 0 or not math.isfinite(lv):
        return math.inf
    w = _weights(spec, x, lv)
    # sd / sum first: squaring a sum near the float limit would overflow.
    ratio = math.sqrt(max(phi * float(w.sum()), 0.0)) / x.s_num
    return ratio * ratio if ratio < 1e150 else math.inf


def _pct(x: float) -> str:
    return f"{x * 100:+.2f}%"


def _verdict_for(change: float, spec: KpiSpec) -> Verdict:
    """Map a material, significant change to improved/degraded given the KPI's good direction."""
    if spec.direction == "either":
        return "degraded"
    good = change > 0 if spec.direction == "up" else change < 0
    return "improved" if good else "degraded"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _thin(label: str, n: int, samples: float, spec: KpiSpec, check_samples: bool) -> str:
    parts = []
    if n < max(spec.min_buckets, 2):
        parts.append(f"{n} of {max(spec.min_buckets, 2)} buckets with data")
    if check_samples and samples < spec.min_samples:
        parts.append(f"{samples:g} of {spec.min_samples} samples")
    return f"{label} window has only " + " and ".join(parts) if parts else ""


@dataclass(frozen=True, slots=True)
class _Factor:
    value: float
    var: float
    label: str | None
    note: str
    inflation: float = 1.0  # empirical / model variance of the earlier days' factors (>= 1)
    broken: bool = False  # references were offered and none is usable


def _halves(spec: KpiSpec, w: WindowData, phi: float) -> tuple[float, float]:
    """log(second half / first half) of a window, and its variance."""
    n = len(w.num) // 2
    first, second = _win(_cut(w, 0, n)), _win(_cut(w, n, len(w.num)))
    if not (first.s_num > 0 and second.s_num > 0 and first.s_den > 0 and second.s_den > 0):
        return math.nan, math.inf
    f = math.log(second.level) - math.log(first.level)
    return f, _log_var(spec, first, phi) + _log_var(spec, second, phi)


def _cut(w: WindowData, lo: int, hi: int) -> WindowData:
    counts = w.counts[lo:hi] if w.counts else ()
    return WindowData(
        w.start, w.end, w.num[lo:hi], w.den[lo:hi], math.fsum(counts) if counts else 1.0, counts
    )


def _parallel(spec: KpiSpec, base: WindowData, control: WindowData, phi: float) -> bool:
    """Whether the control's baseline moved as the judged baseline did, within noise."""
    a, va = _halves(spec, base, phi)
    c, vc = _halves(spec, control, phi)
    if not (math.isfinite(a) and math.isfinite(c)):
        return False
    return abs(a - c) <= REFERENCE_AGREEMENT_Z * math.sqrt(va + vc)


def _seasonal_factor(
    spec: KpiSpec, refs: Sequence[Reference], phi: float, base: WindowData | None = None
) -> _Factor:
    """Pool the usable references' log factors by inverse variance (see "Counterfactual")."""
    cands: list[tuple[Reference, float, float]] = []
    for ref in refs:
        b, p = _win(ref.base), _win(ref.post)
        if not (b.s_num > 0 and p.s_num > 0 and b.s_den > 0 and p.s_den > 0):
            continue
        f = math.log(p.level) - math.log(b.level)
        v = _log_var(spec, p, phi) + _log_var(spec, b, phi) + ref.extra_var
        if math.isfinite(f) and math.isfinite(v) and v > 0:
            cands.append((ref, f, v))
    if not cands:
        return _Factor(0.0, 0.0, None, "", broken=bool(refs))

    def pooled(items: Sequence[tuple[Reference, float, float]]) -> tuple[float, float]:
        inv = sum(1.0 / v for _, _, v in items)
        return sum(f / v for _, f, v in items) / inv, 1.0 / inv

    seasonal = [c for c in cands if c[0].label != "control"]
    control = [c for c in cands if c[0].label == "control"]
    # Days of other kinds (the last resort) differ by kind, not by chance: their whole spread,
    # not a robust one, is the reference's uncertainty.
    robust = not any(c[0].label == "other-day" for c in seasonal)
    inflation = _inflation([(f, v) for _, f, v in seasonal], robust=robust)

    def agrees(item: tuple[Reference, float, float], f0: float, v0: float) -> bool:
        return abs(item[1] - f0) <= REFERENCE_AGREEMENT_Z * math.sqrt((item[2] + v0) * inflation)

    # The week-ago windows share the weekday's own shape (a Monday surge, the Sunday->Monday
    # step): when they hold no other release they anchor the reference. Otherwise the median of
    # the earlier days' factors anchors it. Every other candidate (an earlier day, or one holding
    # a release) is pooled only when it agrees with the anchor within noise.
    clean_weekly = [c for c in seasonal if c[0].label == "weekly"]
    if clean_weekly:
        f0, v0 = pooled(clean_weekly)
    elif seasonal:
        order = sorted(seasonal, key=lambda c: c[1])
        mid = order[(len(order) - 1) // 2]
        f0, v0 = mid[1], mid[2]
    use = [c for c in seasonal if c in clean_weekly or agrees(c, f0, v0)] if seasonal else []
    dropped = [f"{c[0].lag_days}d" for c in seasonal if c not in use]
    if use:
        weekly_n = sum(1 for c in use if c[0].label.startswith("weekly"))
        other_n = sum(1 for c in use if c[0].label == "other-day")
        daily_n = len(use) - weekly_n - other_n
        days = "daily" if daily_n == 1 else f"daily x{daily_n}"
        label = "+".join(
            (["weekly"] if weekly_n else [])
            + ([days] if daily_n else [])
            + ([f"other days x{other_n} (short windows)"] if other_n else [])
        )
    else:
        # The rest of the traffic shares the shape of the hours only when it moved with the
        # judged scope before the release (parallel trends): another region lives in another
        # time zone, and its morning is not this scope's.
        use = [c for c in control if base is None or _parallel(spec, base, c[0].base, phi)]
        if not use:
            return _Factor(0.0, 0.0, None, "", broken=True)
        label = "control"
    f, v = pooled(use)
    note = (
        f"; references out of line with the others (a step they do not share): {', '.join(dropped)}"
    )
    return _Factor(f, v, label, note if dropped else "", inflation)


def _inflation(factors: Sequence[tuple[float, float]], robust: bool = True) -> float:
    """How much more the earlier days' factors scatter than their model variance says (>= 1).

    Each earlier day is a placebo release at the same hours: its factor log(post/base) is what
    "no release" looks like. Their spread, against the variances the count model gives them, is
    the share of the noise the model misses (slow drifts within the day, traffic dips, a release
    step on that day). The median absolute deviation keeps one stepped day from dominating; the
    estimate is shrunk towards 1 by INFLATION_PRIOR pseudo-days, and never below 1.
    """
    if len(factors) < 2:
        return 1.0
    f = np.array([x for x, _ in factors])
    v = np.array([x for _, x in factors])
    if len(factors) == 2:
        mad = abs(float(f[0] - f[1])) / math.sqrt(float(v.sum()))
    elif robust:
        z = (f - np.median(f)) / np.sqrt(v)
        mad = float(np.median(np.abs(z - np.median(z)))) * 1.4826
    else:
        z = (f - np.average(f, weights=1 / v)) / np.sqrt(v)
        mad = math.sqrt(float(np.sum(z * z)) / (len(z) - 1))
    n = len(factors) - 1
    k2 = (INFLATION_PRIOR + n * mad**2) / (INFLATION_PRIOR + n)
    return max(1.0, k2)


def judge_kpi(
    spec: KpiSpec,
    base: WindowData,
    post: WindowData,
    refs: Sequence[Reference] = (),
    *,
    look: Look | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> KpiJudgement:
    """Judge one KPI of one release at one look.

    Args:
        spec: the KPI (direction, min_change, min_buckets, min_samples, aggregation).
        base: the baseline window before the release.
        post: the post window so far.
        refs: candidate references (earlier days' windows, or the concurrent control).
        look: where this look stands in the sequence; default a single look at `alpha`.
        alpha: the level of a single look (when `look` is None).

    Returns:
        The judgement; see the module docstring for the rules.

    Raises:
        ValueError: when alpha is not in (0, 1) (a configuration bug, not a data error).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    with np.errstate(all="ignore"):
        own = _present(post)
        coverage = sum(own) / len(own) if own else 0.0
        base, post, refs = _common(base, post, refs)
        return replace(
            _judge(spec, base, post, refs, look or Look.fixed(alpha), coverage), coverage=coverage
        )


def _present(w: WindowData) -> list[bool]:
    return [
        d > 0 and math.isfinite(d) and math.isfinite(x) for x, d in zip(w.num, w.den, strict=True)
    ]


def _keep(w: WindowData, mask: Sequence[bool]) -> WindowData:
    """The window with the buckets outside `mask` made missing."""
    if all(mask):
        return w
    counts = w.counts or tuple(1.0 for _ in w.num)
    return replace(
        w,
        num=tuple(x if m else 0.0 for x, m in zip(w.num, mask, strict=True)),
        den=tuple(x if m else 0.0 for x, m in zip(w.den, mask, strict=True)),
        counts=tuple(x if m else 0.0 for x, m in zip(counts, mask, strict=True)),
        samples=math.fsum(x for x, m in zip(counts, mask, strict=True) if m),
    )


def _common(
    base: WindowData, post: WindowData, refs: Sequence[Reference]
) -> tuple[WindowData, WindowData, list[Reference]]:
    """Judged windows and references on the buckets they all hold (like with like).

    A minute missing on one side only (a telemetry outage, today or on a reference day) would
    weigh the shape of the day differently on the two sides of the difference: at a daily peak,
    ten missing minutes move a 4-hour mean by a few percent. So a bucket counts only where the
    judged window and every reference of the same length hold it.
    """
    usable = [
        r for r in refs if len(r.base.num) == len(base.num) and len(r.post.num) == len(post.num)
    ]
    if not usable:
        return base, post, list(refs)
    bm = _present(base)
    pm = _present(post)
    for r in usable:
        bm = [a and b for a, b in zip(bm, _present(r.base), strict=True)]
        pm = [a and b for a, b in zip(pm, _present(r.post), strict=True)]
    out = [
        replace(r, base=_keep(r.base, bm), post=_keep(r.post, pm)) if r in usable else r
        for r in refs
    ]
    return _keep(base, bm), _keep(post, pm), out


def _judge(
    spec: KpiSpec,
    base: WindowData,
    post: WindowData,
    refs: Sequence[Reference],
    look: Look,
    coverage: float,
) -> KpiJudgement:
    b, p = _win(base), _win(post)
    nan = [
        f"{x.w.nan_buckets} NaN bucket(s) in {label} treated as missing"
        for label, x in (("baseline", b), ("post", p))
        if x.w.nan_buckets
    ]
    j = KpiJudgement(
        kpi=spec.name,
        verdict="inconclusive",
        reason="",
        reason_code="",
        baseline_value=_finite(b.level),
        post_value=_finite(p.level),
        method="counts-log-ratio",
        coverage=coverage,
    )
    notes = "".join(f"; {n}" for n in nan)
    if coverage < 1.0:
        missing = round((1.0 - coverage) * len(p.w.mask))
        notes += f"; post window {coverage:.0%} covered ({missing} bucket(s) missing)"

    def say(verdict: Verdict, code: str, reason: str, **kw: object) -> KpiJudgement:
        return replace(j, verdict=verdict, reason_code=code, reason=reason + notes, **kw)  # type: ignore[arg-type]

    if b.w.n and p.w.n and not (math.isfinite(b.level) and math.isfinite(p.level)):
        return say("inconclusive", "degenerate", "values overflow floating-point arithmetic")
    if b.w.n == 0 or abs(b.level) < sys.float_info.min or base.samples <= 0 or b.s_num == 0:
        return say(
            "inconclusive", "empty-baseline", "baseline is empty or zero: no relative change"
        )
    if b.level < 0:
        return say("inconclusive", "negative-baseline", f"baseline value {b.level:g} is negative")
    thin = _thin("baseline", b.w.n, base.samples, spec, check_samples=True)
    if thin:
        return say("inconclusive", "thin-data", thin + "; a longer baseline is needed")
    # A sum's post count is the measurement itself: few samples after a release is a drop to
    # judge (as counts), not missing data. Other aggregations need their samples.
    thin = _thin("post", p.w.n, post.samples, spec, check_samples=spec.aggregation != "sum")
    if thin:
        return say("inconclusive", "thin-data", thin)

    # Dispersion from every window read (see "Variance from counts").
    ss, pairs = 0.0, 0
    ref_wins = [(_win(r.base), _win(r.post)) for r in refs]
    for x in (b, p, *(w for pair in ref_wins for w in pair)):
        s, k = _successive(spec, x)
        ss, pairs = ss + s, pairs + k
    phi = ss / (2 * pairs) if pairs else math.nan
    if not math.isfinite(phi):
        return say("inconclusive", "thin-data", "too few consecutive buckets to estimate noise")

    factor = _seasonal_factor(spec, refs, phi, base)
    if factor.broken:
        return say(
            "inconclusive",
            "no-reference",
            "no usable reference: the earlier days hold no data at these hours, or the rest of "
            "the traffic did not move with this scope before the release (another shape of the "
            "day)",
        )
    notes = factor.note + notes
    ref_label = factor.label
    method = "counts-log-ratio" + (f"+reference({ref_label})" if ref_label else "")
    if factor.inflation > 1.0:
        method += f"+inflation({factor.inflation:.2g})"
    if not look.last or look.info_fraction < 1:
        method += f"+look(t={look.info_fraction:.2f},z={look.boundary:.2f})"
    expected = b.level * math.exp(factor.value)  # the post level without the release
    vb = _log_var(spec, b, phi)
    if p.s_num > 0 and p.level > 0 and math.isfinite(p.level):
        scale = "log"
        d = math.log(p.level) - math.log(b.level) - factor.value
        # Count weights at the larger of the observed and the expected level: without a change
        # the post counts are the expected ones, and a drop is not made to look more certain by
        # its own, lower counts.
        counted = spec.aggregation in ("ratio", "sum")
        vp = _log_var(spec, p, phi, level=max(p.level, expected) if counted else None)
        se = math.sqrt((vp + vb + factor.var) * factor.inflation)
    else:
        # Nothing (or less) after the release: weigh it as counts with the expected mean.
        scale = "linear"
        d = p.level / expected - 1.0 if expected > 0 else math.nan
        vp = _log_var(spec, replace_sums(p, expected), phi, level=expected)
        se = math.sqrt((vp + vb + factor.var) * factor.inflation)
    if not (math.isfinite(d) and math.isfinite(se)):
        return say("inconclusive", "degenerate", "values overflow floating-point arithmetic")
    z = look.boundary

    def change_of(x: float) -> float:
        return math.expm1(max(min(x, _MAX_LOG), -_MAX_LOG)) if scale == "log" else x

    lo, hi = change_of(d - z * se), change_of(d + z * se)
    change = change_of(d)
    j = replace(
        j,
        method=method,
        change=change,
        ci_low=lo,
        ci_high=hi,
        p_value=float(2 * ndtr(-abs(d) / se)) if se > 0 else (0.0 if d else 1.0),
        reference=ref_label,
    )
    mc = spec.min_change
    if se <= ZERO_SE:
        exact = f"windows are constant; exact change {_pct(change)}"
        if abs(change) >= mc and abs(change) > ZERO_SE:
            return say(
                _verdict_for(change, spec), "constant-shift", f"{exact} reaches min_change {mc:.2%}"
            )
        return say("neutral", "constant", f"{exact} is below min_change {mc:.2%}")

    margin = mc * CALL_MARGIN
    ci = f"change {_pct(change)} [{_pct(lo)}, {_pct(hi)}]"
    if (lo > margin or hi < -margin) and abs(change) >= mc:
        return say(
            _verdict_for(change, spec),
            "significant",
            f"{ci} excludes +-{margin:.2%} and reaches min_change {mc:.2%}",
        )
    if lo >= -mc and hi <= mc:
        return say("neutral", "within-threshold", f"{ci} lies within +-{mc:.2%}")
    if look.last:
        zt = float(-ndtri(TOST_LEVEL))
        tlo, thi = change_of(d - zt * se), change_of(d + zt * se)
        if tlo >= -mc and thi <= mc:
            return say(
                "neutral",
                "within-threshold",
                f"{ci}; its {1 - 2 * TOST_LEVEL:.0%} interval [{_pct(tlo)}, {_pct(thi)}] lies "
                f"within +-{mc:.2%} (two one-sided tests at {TOST_LEVEL:.0%})",
            )
        return say(
            "inconclusive",
            "wide-ci",
            f"{ci}: no change beyond {_pct(lo)} / {_pct(hi)} can be excluded at this horizon; "
            f"not decisive at min_change {mc:.2%}",
            detectable_low=lo,
            detectable_high=hi,
        )
    return say(
        "inconclusive",
        "interim-no-call",
        f"look at t={look.info_fraction:.2f}: {ci} not decisive yet",
    )


def replace_sums(x: _Win, level: float) -> _Win:
    """The window as if its numerator had the `level` (the counterfactual's counts)."""
    return _Win(x.w, x.counts, level * x.s_den, x.s_den)
