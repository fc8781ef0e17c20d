"""Reference days with releases of their own, made usable: each segment brought to one level.

A reference day stands for "the same hours without a release". When the service released on
that day inside the span a verdict reads, the day's data steps at that release (by its effect),
and until now the day was read only up to the step, which cut every horizon short in a service
that releases every few hours. Here the step is taken out instead: the span's buckets across all
reference days are fitted by a multiplicative two-way model

    E[num[d, b]] = den[d, b] * level[d, s(d, b)] * shape[b]

with one level per segment s of day d (the stretches between that day's releases) and one shape
of the hours shared by the days (steps of BLOCK buckets), by weighted least squares on the log
scale (see `_levels`). Only days of the judged day's kind are fitted together (the engine's
choice), and midnight starts a segment on every day with its step kept (weekday levels). Each day is
then rescaled to the level of its main segment: a day with a +10 % release in the middle reads
as that day without it. The bucket a release falls in (half before, half after) is left out, and
so is a segment too thin to tell its level.

Pure: arrays in, arrays out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["AdjustedDay", "level_adjust"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class AdjustedDay:
    """One reference day after `level_adjust`.

    num, den: the rescaled buckets (left-out ones 0, 0). segment: per bucket, its segment (-1:
    left out). var: per segment, the variance of the log of the factor it was rescaled by (0 for
    the segment that kept its level and for a day without releases): the noise the adjustment
    adds, from the fit's residual dispersion.
    """

    num: FloatArray
    den: FloatArray
    segment: NDArray[np.int64]
    var: FloatArray

    def extra_var(self, lo: int, hi: int, lo2: int, hi2: int) -> float:
        """Variance the adjustment adds to log(sum num[lo2:hi2]) - log(sum num[lo:hi]).

        Each bucket weighs by its share of its window's sum; segments are taken as independent.
        """
        total = 0.0
        shares: dict[int, float] = {}
        for sign, a, b in ((-1.0, lo, hi), (1.0, lo2, hi2)):
            seg = self.segment[a:b]
            num = self.num[a:b]
            s_num = float(num[seg >= 0].sum())
            if s_num <= 0:
                continue
            for k in np.unique(seg[seg >= 0]):
                shares[int(k)] = shares.get(int(k), 0.0) + sign * float(num[seg == k].sum()) / s_num
        for k, share in shares.items():
            total += share * share * float(self.var[k])
        return total


BLOCK = 5  # buckets per step of the shape of the hours
MIN_SEGMENT_BUCKETS = 10  # a shorter segment is left out (its level is barely told)
MIN_SEGMENT_NUM = 5.0  # nor one whose numerator sums to less (a quiet night without orders)


def level_adjust(
    num: Sequence[Sequence[float]],
    den: Sequence[Sequence[float]],
    splits: Sequence[Sequence[int]],
    main: int,
    breaks: Sequence[int] = (),
) -> list[AdjustedDay]:
    """Rescale each day's segments so its releases' steps are gone, at the level of bucket `main`.

    Args:
        num: per day, the bucket numerators over one common span (equal lengths).
        den: per day, the bucket denominators (0: missing).
        splits: per day, the buckets in which a release of the service falls (each is left out
            and starts a new segment whose step is taken out).
        main: the bucket whose segment keeps its level (the judged release's position).
        breaks: buckets where every day's own level may step and the step is real, kept as it is
            (midnight, where weekday levels change): a segment starts there on every day.

    Returns:
        Per day: days without splits unchanged; the others rescaled segment by segment, with
        left-out buckets (release buckets, thin segments) as missing (0, 0).
    """
    days = len(num)
    if days == 0:
        return []
    if not any(len(c) for c in splits):
        return [_unchanged(x, y) for x, y in zip(num, den, strict=True)]
    n = np.asarray(num, dtype=np.float64)
    d = np.asarray(den, dtype=np.float64)
    width = n.shape[1]
    seg = np.zeros((days, width), dtype=np.int64)
    step: list[list[bool]] = []  # per day, per segment after the first: a release's step?
    for i, cuts in enumerate(splits):
        marks = sorted(
            {(c, True) for c in cuts if 0 <= c < width}
            | {(b, False) for b in breaks if 0 < b < width and b not in cuts}
        )
        kinds: list[bool] = []
        for s, (c, is_release) in enumerate(marks, start=1):
            kinds.append(is_release)
            if is_release:
                seg[i, c] = -1
                seg[i, c + 1 :] = s
            else:
                seg[i, c:] = s
        step.append(kinds)
    valid = (d > 0) & (seg >= 0) & np.isfinite(n)
    nseg = max(int(seg.max()) + 1, max(len(k) + 1 for k in step))
    drop = days * nseg
    size = drop + 1
    gid = np.where(valid, np.arange(days)[:, None] * nseg + seg, drop)
    # Segments too thin to tell their level are left out.
    seg_buckets = np.bincount(gid.ravel(), weights=valid.ravel().astype(np.float64), minlength=size)
    seg_num = np.bincount(gid.ravel(), weights=np.where(valid, n, 0.0).ravel(), minlength=size)
    ok = (seg_buckets >= MIN_SEGMENT_BUCKETS) & (seg_num >= MIN_SEGMENT_NUM)
    ok[drop] = False
    keep = ok[gid]
    gid = np.where(keep, gid, drop)
    n = np.where(keep, n, 0.0)
    d = np.where(keep, d, 0.0)
    level, linked, cov = _levels(n, d, gid, keep, size, nseg)
    out: list[AdjustedDay] = []
    for i in range(days):
        if not len(splits[i]):
            out.append(_unchanged(num[i], den[i]))
            continue
        g = gid[i]
        kept = keep[i]
        if 0 <= main < width and seg[i, main] >= 0 and ok[i * nseg + seg[i, main]]:
            m = int(i * nseg + seg[i, main])
        else:
            segs = np.unique(g[kept])
            if not len(segs):
                out.append(
                    AdjustedDay(np.zeros(width), np.zeros(width), np.full(width, -1), np.zeros(1))
                )
                continue
            # The segment with the most data keeps its level.
            m = int(max(segs, key=lambda x: float(d[i][g == x].sum())))
        base = i * nseg
        scale, coef = _chain(base, step[i], ok, level, linked, m - base)
        day_cov = cov[base : base + nseg, base : base + nseg]
        var = np.array([_quad(c, day_cov) for c in coef])
        local = np.where(kept, g - base, -1)
        factor = np.where(kept, scale[np.maximum(local, 0)], np.nan)
        use = kept & np.isfinite(factor)
        out.append(
            AdjustedDay(
                np.where(use, n[i] * np.where(use, factor, 0.0), 0.0),
                np.where(use, d[i], 0.0),
                np.where(use, local, -1),
                var,
            )
        )
    return out


def _quad(c: FloatArray | None, cov: FloatArray) -> float:
    """c' cov c over the segments c names (0 for none: the anchor; inf when unknown)."""
    if c is None or not c.any():
        return 0.0
    nz = np.nonzero(c)[0]
    sub = cov[np.ix_(nz, nz)]
    if not np.isfinite(sub).all():
        return math.inf
    return float(c[nz] @ sub @ c[nz])


def _unchanged(num: Sequence[float], den: Sequence[float]) -> AdjustedDay:
    n = np.asarray(num, dtype=np.float64)
    d = np.asarray(den, dtype=np.float64)
    return AdjustedDay(n, d, np.where(d > 0, 0, -1), np.zeros(1))


def _chain(
    base: int,
    kinds: Sequence[bool],
    ok: NDArray[np.bool_],
    level: FloatArray,
    linked: NDArray[np.int64],
    anchor: int,
) -> tuple[FloatArray, list[FloatArray | None]]:
    """Per segment of one day, the factor that takes out every release step between it and the
    anchor segment (factor 1), and the log factor as a combination of the day's segment log
    levels (for its variance).

    Across a release a kept segment is brought to its neighbour's level (towards the anchor);
    across a break (a real step) the factor carries over. Where a left-out segment hides whether
    a step is a release's or a break's, or the levels are not linked through other days, the
    segments beyond are left out (NaN).
    """
    count = len(kinds) + 1
    scale = np.full(count, np.nan)
    coef: list[FloatArray | None] = [None] * count
    if not (0 <= anchor < count) or not ok[base + anchor]:
        return scale, coef
    scale[anchor] = 1.0
    coef[anchor] = np.zeros(count)
    for order in (range(anchor + 1, count), range(anchor - 1, -1, -1)):
        prev = anchor
        pending: list[bool] = []
        for s in order:
            # The boundary between s and its neighbour towards the anchor.
            pending.append(kinds[s - 1] if s > anchor else kinds[s])
            if not ok[base + s]:
                continue
            if all(pending):
                if linked[base + s] < 0 or linked[base + s] != linked[base + prev]:
                    break  # the step is not told apart from the shape of the hours
                scale[s] = scale[prev] * level[base + prev] / level[base + s]
                c = np.array(coef[prev], copy=True)
                c[prev] += 1.0
                c[s] -= 1.0
                coef[s] = c
            elif not any(pending):
                scale[s] = scale[prev]
                coef[s] = coef[prev]
            else:
                break  # a release and a break with a hidden segment between: cannot tell
            prev = s
            pending = []
    return scale, coef


def _levels(
    n: FloatArray,
    d: FloatArray,
    gid: NDArray[np.int64],
    keep: NDArray[np.bool_],
    size: int,
    nseg: int,
) -> tuple[FloatArray, NDArray[np.int64], FloatArray]:
    """Segment levels of the log-linear model log(num/den) = a[segment] + g[block], by weighted
    least squares over cells (day, block of BLOCK buckets, segment) weighted by their counts.

    The shape g is profiled out exactly (for given levels it is the weighted mean per block),
    which leaves a small linear system in the levels: no iteration, so steps at nearly the same
    hour on several days are told apart as well as the data allow. Returns the levels (NaN where
    unknown) and, per segment, the group of segments its level compares with (-1: none).
    """
    width = n.shape[1]
    block = np.arange(width) // BLOCK
    nblocks = int(block[-1]) + 1 if width else 0
    cell = np.where(keep, block[None, :] * size + gid, -1).ravel()
    use = cell >= 0
    cn = np.bincount(cell[use], weights=n.ravel()[use], minlength=nblocks * size)
    cd = np.bincount(cell[use], weights=d.ravel()[use], minlength=nblocks * size)
    idx = np.nonzero(cd > 0)[0]
    if not len(idx):
        return np.full(size, np.nan), np.full(size, -1), np.zeros((size, size))
    cb, cs = idx // size, idx % size
    got = np.maximum(cn[idx], 0.5)  # an empty cell weighs as half a count
    y = np.log(got / cd[idx])
    wt = got
    segs, s_index = np.unique(cs, return_inverse=True)
    k = len(segs)
    a_mat = np.zeros((k, nblocks))
    np.add.at(a_mat, (s_index, cb), wt)
    wb = a_mat.sum(axis=0)
    ybar = np.zeros(nblocks)
    np.add.at(ybar, cb, wt * y)
    inv = np.where(wb > 0, 1.0 / np.where(wb > 0, wb, 1.0), 0.0)
    ybar = ybar * inv
    m = np.diag(a_mat.sum(axis=1)) - (a_mat * inv) @ a_mat.T
    rhs = np.zeros(k)
    np.add.at(rhs, s_index, wt * y)
    rhs -= a_mat @ ybar
    a = np.linalg.lstsq(m, rhs, rcond=None)[0]
    level = np.full(size, np.nan)
    level[segs] = np.exp(a)
    # Covariance of the log levels: the residual dispersion (over-dispersion included, and the
    # weights' scale, which for money sums is not a count) times the pseudo-inverse.
    g = ybar - (a_mat.T @ a) * inv
    resid = y - a[s_index] - g[cb]
    dof = len(y) - k - int((wb > 0).sum()) + 1
    phi = float(wt @ (resid * resid)) / dof if dof > 0 else math.inf
    cov = np.full((size, size), np.inf)
    if math.isfinite(phi):
        cov[np.ix_(segs, segs)] = phi * np.linalg.pinv(m)
    # Levels compare only within a group of segments linked through blocks that two days share
    # (the shape ties them); across groups the data do not tell their ratio.
    parent = list(range(k))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    seg_day = segs // nseg
    for b in range(nblocks):
        members = np.nonzero(a_mat[:, b] > 0)[0]
        if len(set(seg_day[members].tolist())) < 2:
            continue  # two segments of one day meet at a release, which tells nothing
        for other in members[1:]:
            parent[find(int(other))] = find(int(members[0]))
    group = np.full(size, -1)
    group[segs] = [find(i) for i in range(k)]
    return level, group, cov
