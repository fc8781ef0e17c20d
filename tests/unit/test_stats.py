"""Unit tests of the statistics behind release verdicts, checked against scipy and simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from stream_app.core import stats as S

FloatArray = S.FloatArray


def _window(num: object, den: object | None = None) -> S.CleanWindow:
    num_a = np.asarray(num, dtype=float)
    den_a = np.ones_like(num_a) if den is None else np.asarray(den, dtype=float)
    return S.clean_window(list(num_a), list(den_a))


def _ratio_window(rng: np.random.Generator, p: float, n: int = 60) -> S.CleanWindow:
    """Conversion-like buckets: sessions ~ Poisson, orders ~ Binomial with a per-bucket rate."""
    den = rng.poisson(40, n)
    rate = rng.beta(p * 200, (1 - p) * 200, n)  # bucket-level overdispersion
    return _window(rng.binomial(den, rate), den)


# --- windows and the ratio-of-sums estimate ------------------------------------------------------


def test_clean_window_treats_nan_and_empty_buckets_as_missing_but_keeps_alignment() -> None:
    w = S.clean_window([1.0, math.nan, 3.0, 4.0, math.inf], [1.0, 1.0, 0.0, 2.0, 1.0])
    assert w.n == 2 and w.nan_buckets == 2
    assert w.num.size == 5  # aligned with a seasonal reference bucket by bucket
    assert list(w.values) == [1.0, 2.0]
    assert np.isfinite(w.num).all() and np.isfinite(w.den).all()


def test_clean_window_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        S.clean_window([1.0, 2.0], [1.0])


def test_ratio_estimate_with_unit_denominators_is_the_mean_and_its_squared_standard_error() -> None:
    x = np.random.default_rng(1).normal(50, 5, 40)
    est = S.ratio_estimate(_window(x))
    assert est.value == pytest.approx(x.mean())
    assert est.var == pytest.approx(sps.sem(x) ** 2)
    assert est.n == 40


def test_ratio_estimate_is_a_ratio_of_sums_not_a_mean_of_ratios() -> None:
    est = S.ratio_estimate(_window([1, 90], [10, 100]))
    assert est.value == pytest.approx(91 / 110)


def test_delta_method_log_variance_matches_a_cluster_bootstrap() -> None:
    rng = np.random.default_rng(3)
    w = _ratio_window(rng, 0.1)
    idx = rng.integers(0, 60, (4000, 60))
    boot = np.log(w.num[idx].sum(axis=1) / w.den[idx].sum(axis=1))
    assert boot.var(ddof=1) / S.ratio_estimate(w).log_var == pytest.approx(1.0, abs=0.12)


def test_relative_change_ci_covers_the_true_change_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(800):
        est = S.relative_change(_ratio_window(rng, 0.11), _ratio_window(rng, 0.10))
        lo, hi = est.interval(0.05)
        hits += lo <= 0.10 <= hi
    assert 0.93 <= hits / 800 <= 0.97


def test_seasonal_difference_in_differences_cancels_a_ramp_and_keeps_coverage() -> None:
    rng = np.random.default_rng(11)
    shape = 2000 * (1 + 0.5 * np.arange(120) / 120)  # traffic ramps +50 % over two hours
    hits, paired, unpaired = 0, [], []
    for _ in range(600):
        noise = rng.gamma(2000, 1 / 2000, 120)
        current = rng.poisson(shape * np.r_[np.ones(60), np.full(60, 0.95)] * noise)
        week_ago = rng.poisson(shape * 0.8 * rng.gamma(2000, 1 / 2000, 120))  # quieter week
        windows = [_window(current[60:]), _window(current[:60])]
        windows += [_window(week_ago[60:]), _window(week_ago[:60])]
        est = S.relative_change(*windows)
        assert est.paired
        lo, hi = est.interval(0.05)
        hits += lo <= -0.05 <= hi
        paired.append(est.se)
        unpaired.append(math.sqrt(sum(S.ratio_estimate(w).log_var for w in windows)))
    assert 0.93 <= hits / 600 <= 0.97
    # Pairing each window with its reference bucket by bucket keeps the shared within-hour ramp
    # out of the noise; treated as four independent windows the ramp would inflate the error.
    assert float(np.median(paired)) < 0.6 * float(np.median(unpaired))


def test_log_change_p_value_and_df_match_scipy_welch_t_test() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        n1, n2 = int(rng.integers(5, 80)), int(rng.integers(5, 80))
        x, y = rng.gamma(5, 20, n1), rng.gamma(5, 21, n2)
        est = S.relative_change(_window(x), _window(y))
        # Delta method on the log scale: log R_j with standard deviation s_j/R_j.
        ref = sps.ttest_ind_from_stats(
            math.log(x.mean()), x.std(ddof=1) / x.mean(), n1,
            math.log(y.mean()), y.std(ddof=1) / y.mean(), n2,
            equal_var=False,
        )  # fmt: skip
        assert est.p_value() == pytest.approx(ref.pvalue, rel=1e-9)
        assert est.change == pytest.approx(x.mean() / y.mean() - 1)


def test_relative_change_falls_back_to_the_linear_scale_when_the_post_value_is_zero() -> None:
    est = S.relative_change(_window(np.zeros(30)), _window(np.full(30, 10.0) + np.arange(30) % 3))
    assert est.scale == "linear"
    assert est.change == pytest.approx(-1.0)
    assert est.p_value() == 0.0  # an all-zero post window is an exact drop, no noise on it


def test_post_buckets_for_halfwidth_reaches_the_target_width() -> None:
    rng = np.random.default_rng(2)
    base, post = _window(rng.normal(100, 10, 60)), _window(rng.normal(100, 10, 20))
    est = S.relative_change(post, base)
    assert est.quantile(0.05) * est.se > 0.04  # too wide now
    total = est.post_buckets_for_halfwidth(0.05, 0.04, 20)
    assert total is not None and total > 20
    # Scale the post variance as 1/n: at `total` buckets the half-width is at most the target,
    # one bucket fewer it is not.
    for n, ok in ((total, True), (total - 1, False)):
        shrunk = math.sqrt(est.se**2 - est.post_var + est.post_var * 20 / n)
        assert (est.quantile(0.05) * shrunk <= 0.04) is ok
    # A noisy baseline cannot be fixed with more post data.
    noisy = S.relative_change(post, _window(rng.normal(100, 60, 60)))
    assert noisy.post_buckets_for_halfwidth(0.05, 0.04, 20) is None


# --- rank statistics ------------------------------------------------------------------------------


def test_mann_whitney_matches_scipy_on_random_inputs_with_and_without_ties() -> None:
    rng = np.random.default_rng(0)
    for i in range(300):
        m, n = int(rng.integers(2, 40)), int(rng.integers(2, 40))
        if i % 2:
            x, y = rng.normal(0.3, 1, m), rng.normal(0, 1, n)
        else:  # error counts: heavy ties
            x, y = rng.poisson(2, m).astype(float), rng.poisson(2.5, n).astype(float)
        u, p, _ = S.mann_whitney(x, y)
        ref = sps.mannwhitneyu(x, y, alternative="two-sided")
        assert u == ref.statistic
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)


def test_exact_null_distribution_matches_scipy_exact_p_values() -> None:
    rng = np.random.default_rng(4)
    for m, n in [(1, 5), (3, 5), (8, 20), (12, 15), (25, 30)]:
        x, y = rng.normal(0.5, 1, m), rng.normal(0, 1, n)
        u1, _, _ = S.mann_whitney(x, y)
        pmf = S.mwu_null_pmf(m, n)
        assert pmf.sum() == pytest.approx(1.0)
        u = int(max(u1, m * n - u1))
        mine = min(1.0, 2 * float(pmf[u:].sum()))
        assert mine == pytest.approx(sps.mannwhitneyu(x, y, method="exact").pvalue, rel=1e-9)


def _accepted(x: FloatArray, y: FloatArray, shift: float, level: float, method: str) -> bool:
    """Brute force: does the two-sided Mann-Whitney test of (x - shift) vs y keep the shift?"""
    return bool(sps.mannwhitneyu(x - shift, y, method=method).pvalue > level)


@pytest.mark.parametrize(
    ("m", "n", "ties", "method"),
    [(5, 7, False, "exact"), (8, 12, False, "exact"), (3, 40, False, "exact"),
     (60, 60, False, "asymptotic"), (40, 50, True, "asymptotic"), (6, 9, True, "asymptotic")],
)  # fmt: skip
def test_hodges_lehmann_interval_is_the_inverted_rank_test(
    m: int, n: int, ties: bool, method: str
) -> None:
    # The distribution-free interval is exactly the set of shifts the test does not reject:
    # just inside each end it accepts, just outside it rejects (checked with scipy's own test).
    rng = np.random.default_rng(m * 100 + n)
    level = 0.05
    for _ in range(5):
        if ties:
            x, y = rng.poisson(6, m).astype(float), rng.poisson(5, n).astype(float)
        else:
            x, y = rng.normal(0.4, 1, m), rng.normal(0, 1, n)
        shift, lo, hi, exact = S.hodges_lehmann(x, y, level)
        assert exact == (method == "exact")
        diffs = np.unique((x[:, None] - y[None, :]).ravel())
        assert shift == pytest.approx(float(np.median((x[:, None] - y[None, :]).ravel())))
        i_lo, i_hi = int(np.searchsorted(diffs, lo)), int(np.searchsorted(diffs, hi))
        assert _accepted(x, y, (diffs[i_lo] + diffs[i_lo + 1]) / 2, level, method)
        assert not _accepted(x, y, (diffs[i_lo - 1] + diffs[i_lo]) / 2, level, method)
        assert _accepted(x, y, (diffs[i_hi - 1] + diffs[i_hi]) / 2, level, method)
        assert not _accepted(x, y, (diffs[i_hi] + diffs[i_hi + 1]) / 2, level, method)


def test_hodges_lehmann_interval_has_nominal_coverage_for_a_known_shift() -> None:
    rng = np.random.default_rng(9)
    hits = 0
    for _ in range(400):
        x, y = rng.exponential(1, 30) + 0.5, rng.exponential(1, 30)
        _, lo, hi, _ = S.hodges_lehmann(x, y, 0.05)
        hits += lo <= 0.5 <= hi
    assert 0.93 <= hits / 400 <= 0.98


def test_rank_compare_reports_the_direction_of_the_shift() -> None:
    rng = np.random.default_rng(1)
    lower = S.rank_compare(rng.normal(90, 5, 30), rng.normal(100, 5, 30), 0.05)
    assert lower.direction == -1 and lower.p_value < 1e-6 and lower.shift_high < 0
    same = S.rank_compare(np.ones(10), np.ones(10), 0.05)
    assert same.direction == 0 and same.p_value == 1.0


# --- multiplicity ---------------------------------------------------------------------------------


def test_benjamini_hochberg_matches_scipy_false_discovery_control() -> None:
    rng = np.random.default_rng(6)
    assert S.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
        [0.02, 0.04, 0.04, 0.02]
    )
    for _ in range(50):
        p = rng.uniform(0, 0.2, int(rng.integers(1, 12)))
        assert S.benjamini_hochberg(list(p)) == pytest.approx(list(sps.false_discovery_control(p)))
    assert S.benjamini_hochberg([]) == []


def test_interim_threshold_spends_little_alpha_early() -> None:
    levels = [S.interim_threshold(0.05, t / 10) for t in range(1, 11)]
    assert all(a < b for a, b in itertools.pairwise(levels))
    assert levels[0] < 1e-8
    assert levels[-1] == pytest.approx(0.025)  # the full-information end of the boundary
    assert S.interim_threshold(0.05, 0.0) == 0.0
    with pytest.raises(ValueError):
        S.interim_threshold(1.5, 0.5)


@pytest.mark.parametrize("looks", [10, 50])
def test_interim_threshold_keeps_repeated_looks_within_alpha_whatever_the_schedule(
    looks: int,
) -> None:
    # Score process under no change: Brownian motion observed at `looks` equally spaced fractions.
    rng = np.random.default_rng(looks)
    t = np.arange(1, looks + 1) / looks
    z = np.cumsum(rng.standard_normal((100_000, looks)), axis=1) / np.sqrt(np.arange(1, looks + 1))
    thresholds = np.array([S.interim_threshold(0.05, f) for f in t])
    p = 2 * sps.norm.sf(np.abs(z))
    assert (p < thresholds).any(axis=1).mean() <= 0.05
    # ... whereas testing every look at the plain level inflates the error several-fold.
    assert (p < 0.05).any(axis=1).mean() > 0.15
