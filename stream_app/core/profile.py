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

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["level_adjust"]

FloatArray = NDArray[np.float64]

BLOCK = 5  # buckets per step of the shape of the hours
MIN_SEGMENT_BUCKETS = 10  # a shorter segment is left out (its level is barely told)
MIN_SEGMENT_NUM = 5.0  # nor one whose numerator sums to less (a quiet night without orders)


def level_adjust(
    num: Sequence[Sequence[float]],
    den: Sequence[Sequence[float]],
    splits: Sequence[Sequence[int]],
    main: int,
    breaks: Sequence[int] = (),
) -> tuple[list[FloatArray], list[FloatArray]]:
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
        (num, den) per day: days without splits unchanged; the others rescaled segment by
        segment, with left-out buckets (release buckets, thin segments) as missing (0, 0).
    """
    days = len(num)
    if days == 0:
        return [], []
    if not any(len(c) for c in splits):
        return [np.asarray(x, dtype=np.float64) for x in num], [
            np.asarray(x, dtype=np.float64) for x in den
        ]
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
    nseg = int(seg.max()) + 1
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
    level, linked = _levels(n, d, gid, keep, size, nseg)
    out_n: list[FloatArray] = []
    out_d: list[FloatArray] = []
    for i in range(days):
        if not len(splits[i]):
            out_n.append(np.asarray(num[i], dtype=np.float64))
            out_d.append(np.asarray(den[i], dtype=np.float64))
            continue
        g = gid[i]
        kept = keep[i]
        if 0 <= main < width and seg[i, main] >= 0 and ok[i * nseg + seg[i, main]]:
            m = int(i * nseg + seg[i, main])
        else:
            segs = np.unique(g[kept])
            if not len(segs):
                out_n.append(np.zeros(width))
                out_d.append(np.zeros(width))
                continue
            # The segment with the most data keeps its level.
            m = int(max(segs, key=lambda x: float(d[i][g == x].sum())))
        scale = _chain(i * nseg, step[i], ok, level, linked, m - i * nseg)
        local = np.where(kept, g - i * nseg, 0)
        factor = np.where(kept, scale[local], np.nan)
        use = kept & np.isfinite(factor)
        out_n.append(np.where(use, n[i] * np.where(use, factor, 0.0), 0.0))
        out_d.append(np.where(use, d[i], 0.0))
    return out_n, out_d


def _chain(
    base: int,
    kinds: Sequence[bool],
    ok: NDArray[np.bool_],
    level: FloatArray,
    linked: NDArray[np.int64],
    anchor: int,
) -> FloatArray:
    """Per segment of one day, the factor that takes out every release step between it and the
    anchor segment (factor 1).

    Across a release a kept segment is brought to its neighbour's level (towards the anchor);
    across a break (a real step) the factor carries over. Where a left-out segment hides whether
    a step is a release's or a break's, or the levels are not linked through other days, the
    segments beyond are left out (NaN).
    """
    count = len(kinds) + 1
    scale = np.full(count, np.nan)
    if not (0 <= anchor < count) or not ok[base + anchor]:
        return scale
    scale[anchor] = 1.0
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
            elif not any(pending):
                scale[s] = scale[prev]
            else:
                break  # a release and a break with a hidden segment between: cannot tell
            prev = s
            pending = []
    return scale


def _levels(
    n: FloatArray,
    d: FloatArray,
    gid: NDArray[np.int64],
    keep: NDArray[np.bool_],
    size: int,
    nseg: int,
) -> tuple[FloatArray, NDArray[np.int64]]:
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
        return np.full(size, np.nan), np.full(size, -1)
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
    return level, group
