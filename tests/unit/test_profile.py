"""Reference days with a release of their own: level_adjust takes the step out."""

from __future__ import annotations

import numpy as np

from stream_app.core.profile import level_adjust


def _shape(n: int) -> np.ndarray:
    return 1.0 + 0.5 * np.sin(np.linspace(0.0, 3.0, n))


def test_a_step_on_a_reference_day_is_taken_out() -> None:
    rng = np.random.default_rng(3)
    n = 300
    shape = _shape(n)
    den = np.full(n, 2000.0)
    days_num = []
    splits = []
    for day, (cut, step) in enumerate([(None, 1.0), (120, 1.25), (200, 0.8), (None, 1.0)]):
        lam = den * 0.04 * shape * (1.0 + 0.02 * day)
        if cut is not None:
            lam = np.where(np.arange(n) > cut, lam * step, lam)
        days_num.append(rng.poisson(lam).astype(float))
        splits.append(() if cut is None else (cut,))
    adj = level_adjust(days_num, [den] * 4, splits, main=100)
    out_n, out_d = [a.num for a in adj], [a.den for a in adj]
    # Untouched days come back as they were.
    assert np.array_equal(out_n[0], days_num[0]) and np.array_equal(out_n[3], days_num[3])
    for day, cut in ((1, 120), (2, 200)):
        assert out_d[day][cut] == 0.0  # the release's bucket is left out
        before = out_n[day][:cut].sum() / (den[:cut] * shape[:cut]).sum()
        after = out_n[day][cut + 1 :].sum() / (den[cut + 1 :] * shape[cut + 1 :]).sum()
        # Without the adjustment the two sides differ by the step (25 % / 20 %).
        assert abs(after / before - 1.0) < 0.03, (day, after / before)


def test_the_segment_of_the_release_keeps_its_level() -> None:
    n = 100
    den = np.full(n, 1.0)
    a = np.full(n, 10.0)
    b = np.where(np.arange(n) > 40, 20.0, 10.0)
    out_n = [x.num for x in level_adjust([a, b], [den, den], [(), (40,)], main=80)]
    assert abs(out_n[1][80] - 20.0) < 1e-6  # main's segment (after the step) unchanged
    assert abs(out_n[1][10] - 20.0) < 1e-6  # the other one brought to its level


def test_a_thin_segment_is_left_out() -> None:
    n = 100
    den = np.full(n, 1.0)
    a = np.full(n, 10.0)
    adj = level_adjust([a, a.copy()], [den, den], [(), (95,)], main=10)
    out_n, out_d = [x.num for x in adj], [x.den for x in adj]
    assert out_d[1][96:].sum() == 0.0 and out_d[1][:95].sum() == 95.0
    assert out_n[1][:95].sum() == 950.0


def test_steps_at_nearly_the_same_hour_on_every_day_are_told_apart() -> None:
    # Releases land at about the same hour each day (a team's rhythm) on a steep morning ramp:
    # only the few buckets between the days' release times tell step from shape.
    n = 481
    t = np.arange(n)
    shape = np.exp(0.8 * t / n)
    cuts = (145, 165, 169, 149)
    steps = (1.3, 0.8, 1.1, 1.0)
    nums, dens = [], []
    for c, st in zip(cuts, steps, strict=True):
        nums.append(1000.0 * shape * np.where(t > c, st, 1.0))
        dens.append(np.ones(n))
    adj = level_adjust(nums, dens, [(c,) for c in cuts], main=240)
    out_n, out_d = [x.num for x in adj], [x.den for x in adj]
    for a, b in zip(out_n, out_d, strict=True):
        base = a[:240].sum() / b[:240].sum()
        post = a[241:].sum() / b[241:].sum()
        clean = shape[241:].mean() / shape[:240].mean()
        assert abs(np.log(post / base) - np.log(clean)) < 0.005


def test_midnight_keeps_its_step_and_one_day_alone_is_not_adjusted() -> None:
    n = 200
    t = np.arange(n)
    ones = np.ones(n)
    day = [1000.0 * np.where(t >= 100, 0.8, 1.0) * (1 + t / n) for _ in range(2)]
    day[1] = day[1] * np.where(t > 50, 1.25, 1.0)  # a release at 50 on day two
    out_n = [x.num for x in level_adjust(day, [ones, ones], [(), (50,)], main=150, breaks=(100,))]
    # The release's step is gone (day two is day one at main's level, x1.25), midnight's
    # (x0.8 at 100) stays.
    assert np.allclose(out_n[1][120] / out_n[0][120], 1.25, rtol=1e-3)
    assert np.allclose(out_n[1][20] / out_n[0][20], 1.25, rtol=1e-3)
    assert np.allclose(out_n[1][120] / out_n[1][99], 0.8 * (1 + 120 / n) / (1 + 99 / n))
    # One day on its own: the step cannot be told from the shape; the segments beyond it are
    # left out, main's keeps its data.
    alone = level_adjust([day[1]], [ones], [(50,)], main=150)
    alone_n, alone_d = [x.num for x in alone], [x.den for x in alone]
    assert alone_d[0][:51].sum() == 0.0 and alone_d[0][51:].sum() == n - 51
    assert np.array_equal(alone_n[0][51:], day[1][51:])


def test_the_adjustment_reports_the_noise_it_adds() -> None:
    # Poisson days with a release step on day two: the rescaled segment carries the variance of
    # the estimated step (about 1/N_before + 1/N_after on the log scale), the anchor none.
    rng = np.random.default_rng(5)
    n = 240
    shape = _shape(n)
    lam = 20.0 * shape
    days = [rng.poisson(lam).astype(float) for _ in range(3)]
    days[1] = rng.poisson(lam * np.where(np.arange(n) > 60, 1.2, 1.0)).astype(float)
    ones = np.ones(n)
    adj = level_adjust(days, [ones] * 3, [(), (60,), ()], main=200)
    day = adj[1]
    assert day.var[day.segment[200]] == 0.0
    before = float(day.var[day.segment[10]])
    expected = 1.0 / days[1][:60].sum() + 1.0 / days[1][61:].sum()
    assert 0.5 * expected < before < 3.0 * expected
    # log(sum post) - log(sum base) with the base all before the step: its whole variance.
    assert abs(day.extra_var(0, 60, 100, 240) - before) < 1e-12
    assert adj[0].extra_var(0, 60, 100, 240) == 0.0
