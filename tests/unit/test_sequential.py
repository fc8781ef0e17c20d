"""Group-sequential boundaries: the looks together keep the error rate at alpha (no broker)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_app.core.sequential import boundaries, look_schedule, schedule_boundaries


def test_one_look_is_the_plain_normal_quantile() -> None:
    assert boundaries(0.05, (1.0,))[0] == pytest.approx(1.95996, abs=1e-4)


def test_the_schedule_is_dense_early_and_ends_at_the_horizon() -> None:
    looks = look_schedule(600, 14400, 300)
    assert looks[:5] == (600, 900, 1200, 1500, 1800)
    assert looks[-1] == 14400 and list(looks) == sorted(set(looks))
    assert len(looks) <= 20  # fewer looks later: lower boundaries where changes are small
    assert look_schedule(600, 14400, 0) == (14400,)


@pytest.mark.parametrize("alpha", [0.05, 0.02])
def test_brownian_paths_cross_the_boundaries_alpha_of_the_time(alpha: float) -> None:
    looks, zs = schedule_boundaries(alpha, 600, 14400, 300)
    t = np.array(looks) / looks[-1]
    rng = np.random.default_rng(7)
    n = 100_000
    steps = rng.normal(size=(n, len(t))) * np.sqrt(np.diff(np.r_[0.0, t]))
    z = np.cumsum(steps, axis=1) / np.sqrt(t)
    crossed = float((np.abs(z) >= np.array(zs)).any(axis=1).mean())
    # Monte Carlo error at n = 100 k is ~0.07 % (alpha 5 %): the recursion is exact to that.
    assert crossed == pytest.approx(alpha, abs=4 * math.sqrt(alpha / n) + 0.001)
    # Without the correction, testing every look at the fixed level would be far above alpha.
    fixed_z = 2.326 if alpha == 0.02 else 1.96
    naive = float((np.abs(z) >= fixed_z).any(axis=1).mean())
    assert naive > 2 * alpha


def test_boundaries_are_wide_early_and_near_the_fixed_sample_one_at_the_end() -> None:
    _, zs = schedule_boundaries(0.02, 600, 14400, 300)
    assert zs[0] > 3.0 and zs[-1] < 2.8
    assert boundaries(0.02, (0.5, 1.0)) == boundaries(0.02, (0.5, 1.0))  # cached, deterministic


def test_bad_arguments_are_caller_errors() -> None:
    with pytest.raises(ValueError):
        boundaries(0.0, (1.0,))
    with pytest.raises(ValueError):
        boundaries(0.05, (0.5, 0.4))
    with pytest.raises(ValueError):
        look_schedule(600, 0, 300)
