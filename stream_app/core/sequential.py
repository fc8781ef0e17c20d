"""Group-sequential boundaries: how far a z statistic must go at each look, over a horizon.

A release is looked at every few minutes from its minimum post window until a verdict is decisive
or its maximum horizon passes. Testing at a fixed level at every look would call ~1 in 4 releases
that changed nothing (Armitage, McPherson & Rowe, JRSS A 1969). The boundaries here spend the
error rate over the horizon with the Lan-DeMets method (Biometrika 1983) and the power family
alpha(t) = alpha * t**rho (Kim & DeMets, Biometrika 1987), t = elapsed / horizon: with rho = 1 a
large change is called within minutes while the last look keeps a boundary near the fixed-sample
one. The looks' schedule is fixed by the clock, never by the data, so stopping early (a decisive
verdict, or the next release cutting the horizon) keeps the error rate at most alpha.

The boundary of look k solves P(|Z_k| >= c_k, |Z_j| < c_j for j < k) = alpha(t_k) - alpha(t_{k-1})
for a Brownian motion observed at the looks (the score process of the estimate), computed by
numerical integration over a grid (Armitage, McPherson & Rowe's recursion; Jennison & Turnbull,
*Group Sequential Methods*, 2000, ch. 19). The verdict's estimate also carries a fixed term (the
baseline and the seasonal reference, the same at every look), which makes successive looks more
correlated than a Brownian motion: the true error rate is lower than nominal, never higher.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from scipy.special import ndtr, ndtri

__all__ = ["boundaries", "look_schedule", "schedule_boundaries"]

_GRID = 801  # points of the density grid (odd: 0 is on it)
_SPAN = 8.0  # grid half-width in standard deviations of the score at each look


def _crossing(c: float, t: float, sd: float, grid: np.ndarray, weights: np.ndarray) -> float:
    """P(|S_t| >= c sqrt(t)) from the continuation density (grid, weights) one step of sd back."""
    b = c * math.sqrt(t)
    up = 1.0 - ndtr((b - grid) / sd)
    down = ndtr((-b - grid) / sd)
    return float(np.sum(weights * (up + down)))


def _spent(alpha: float, t: float, rho: float) -> float:
    return alpha * min(max(t, 0.0), 1.0) ** rho


@functools.lru_cache(maxsize=64)
def boundaries(alpha: float, fractions: tuple[float, ...], rho: float = 1.0) -> tuple[float, ...]:
    """Two-sided z boundaries for looks at information `fractions` (increasing, last <= 1).

    Args:
        alpha: the two-sided error rate spent over the whole horizon.
        fractions: the looks' information (time) fractions of the horizon, increasing.
        rho: the power of the spending function alpha * t**rho.

    Returns:
        One boundary per look: call when |z| >= it (inf where a look spends nothing).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if any(b <= a for a, b in itertools.pairwise(fractions)) or not fractions:
        raise ValueError("fractions must be increasing and non-empty")
    out: list[float] = []
    # Density of the score S_k = Z_k * sqrt(t_k) on the continuation region, on a grid.
    grid: np.ndarray | None = None
    dens: np.ndarray | None = None
    prev_t = 0.0
    prev_spent = 0.0
    for t in fractions:
        spend = _spent(alpha, t, rho) - prev_spent
        dt = t - prev_t
        if grid is None or dens is None:
            # First look: S ~ N(0, t); the boundary is the plain normal quantile.
            c = float(-ndtri(spend / 2)) if spend > 0 else math.inf
            out.append(c)
            half = c * math.sqrt(t) if math.isfinite(c) else _SPAN * math.sqrt(t)
            grid = np.linspace(-half, half, _GRID)
            dens = np.exp(-(grid**2) / (2 * t)) / math.sqrt(2 * math.pi * t)
        else:
            step = grid[1] - grid[0]
            weights = dens * step
            sd = math.sqrt(dt)

            if spend <= 0:
                c = math.inf
            else:
                lo, hi = 0.0, 40.0
                if _crossing(hi, t, sd, grid, weights) > spend:
                    c = hi
                else:
                    for _ in range(80):  # bisection: cross() falls as c rises
                        mid = (lo + hi) / 2
                        if _crossing(mid, t, sd, grid, weights) > spend:
                            lo = mid
                        else:
                            hi = mid
                    c = hi
            out.append(c)
            b = c * math.sqrt(t) if math.isfinite(c) else _SPAN * math.sqrt(t)
            new_grid = np.linspace(-b, b, _GRID)
            # Convolve the continuation density with the Gaussian increment.
            kernel = np.exp(-((new_grid[:, None] - grid[None, :]) ** 2) / (2 * dt))
            dens = kernel @ weights / math.sqrt(2 * math.pi * dt)
            grid = new_grid
        prev_t = t
        prev_spent = _spent(alpha, t, rho)
    return tuple(out)


def look_schedule(first: float, horizon: float, every: float) -> tuple[float, ...]:
    """Elapsed seconds of a release's looks: every `every` at first, then a quarter further each.

    Looks come every few minutes while a big change would show (the first half hour), then ever
    further apart (15 min at 1 h, 1 h at 4 h): fewer looks keep the boundaries low where the
    remaining changes are small. `every` <= 0: one look, at the horizon.
    """
    if horizon <= 0:
        raise ValueError("horizon must be positive")
    if every <= 0:
        return (horizon,)
    out: list[float] = []
    e = min(max(first, every), horizon)
    while e < horizon - 1e-9:
        out.append(e)
        e += max(every, math.floor(e / 4 / every) * every)
    out.append(horizon)
    return tuple(out)


def schedule_boundaries(
    alpha: float, first: float, horizon: float, every: float, rho: float = 1.0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The looks' elapsed seconds and their z boundaries (see `look_schedule`, `boundaries`)."""
    looks = look_schedule(first, horizon, every)
    return looks, boundaries(alpha, tuple(e / horizon for e in looks), rho)
